"""Runbook 3.3 (OPS-02) decision engine against a real Prometheus with backfilled histories.

One Prometheus serves the module. Each scenario lives in its own 4-hour slot three days back:
history from two hours before the slot's flip to one hour after it, evaluated at the end, so the
shipped default queries and windows (1 h after, 1 h before each flip) work unchanged. Counters
advance every minute by a per-minute rate that changes at the tenant's flip; pilot tenants
count bad signatures as 401s (`rejected_signature`) after their flip, as `would_reject` before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from pytest_ledger_rollout.checks.metrics import (
    Decision,
    DecisionPolicy,
    Outcome,
    PrometheusClient,
    RollbackPlan,
    Verdict,
    decide,
    to_check_result,
)
from pytest_ledger_rollout.targets.prometheus_server import (
    PrometheusServer,
    Series,
    start_prometheus,
)

from .loopback_http import LoopbackHTTP, Reply
from .support import require_prometheus

BASE = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
SLOT = timedelta(hours=4)
BEFORE, AFTER = 120, 60  # minutes of history around the slot's flip
WITHDRAWALS = "/wallets/{wallet_id}/withdrawals"
TARGET = {"job": "ledger", "instance": "ledger:8000"}
CONTROLS = ("c-1", "c-2", "c-3")
DEFAULT_POLICY = DecisionPolicy()


@dataclass(frozen=True)
class Traffic:
    """Per minute, for one tenant."""

    withdrawals: float = 100
    insufficient: float = 1  # 400 INSUFFICIENT_FUNDS, part of the withdrawals
    webhooks: float = 100
    bad_signatures: float = 0.5  # part of the webhooks
    mismatches: float = 0


@dataclass(frozen=True)
class Tenant:
    before: Traffic = Traffic()
    after: Traffic = Traffic()  # from its flip (a control tenant: from the slot's flip)
    flip_offset: int = 0  # minutes before the slot's flip that this pilot tenant flipped
    exported: bool = True


@dataclass(frozen=True)
class Scenario:
    pilots: Mapping[str, Tenant] = field(default_factory=lambda: {"t-1": Tenant()})
    controls: Tenant = Tenant()  # every control tenant alike
    scrape_down: range = range(0)  # minutes from the slot's flip when `up` is 0


HEALTHY = Traffic()
ZERO = replace(HEALTHY, insufficient=0)
SCENARIOS = {
    "go": Scenario({"t-1": Tenant(), "t-2": Tenant(flip_offset=10)}),
    "no_series": Scenario({"t-1": Tenant(exported=False)}),
    "thin": Scenario({"t-1": Tenant(Traffic(1, 0, 1, 0), Traffic(1, 0, 1, 0))}),
    "control_regressed": Scenario(
        {"t-1": Tenant(after=replace(HEALTHY, insufficient=4))},
        controls=Tenant(after=replace(HEALTHY, insufficient=4)),
    ),
    "mismatch": Scenario({"t-1": Tenant(after=replace(HEALTHY, mismatches=0.05))}),
    "surge": Scenario({"t-1": Tenant(after=replace(HEALTHY, insufficient=3.4)), "t-2": Tenant()}),
    "zero_blip": Scenario(
        {"t-1": Tenant(ZERO, replace(ZERO, insufficient=2 / 60))}, controls=Tenant(ZERO, ZERO)
    ),
    "zero_surge": Scenario(
        {"t-1": Tenant(ZERO, replace(ZERO, insufficient=9 / 60))}, controls=Tenant(ZERO, ZERO)
    ),
    "scrape_gap": Scenario(scrape_down=range(20, 26)),
}


def slot_flip(name: str) -> datetime:
    return BASE + list(SCENARIOS).index(name) * SLOT + timedelta(minutes=BEFORE)


def history() -> list[Series]:
    samples: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[tuple[datetime, float]]] = {}

    def add(family: str, kind: str, labels: Mapping[str, str], at: datetime, value: float) -> None:
        key = (family, kind, tuple(sorted({**TARGET, **labels}.items())))
        samples.setdefault(key, []).append((at, value))

    for name, s in SCENARIOS.items():
        flip = slot_flip(name)
        tenants = [(t, h, True) for t, h in s.pilots.items()]
        tenants += [(c, s.controls, False) for c in CONTROLS]
        for minute in range(-BEFORE, AFTER + 1):
            at = flip + timedelta(minutes=minute)
            add("up", "gauge", {}, at, 0 if minute in s.scrape_down else 1)
            for tenant, h, pilot in tenants:
                if h.exported:
                    for family, labels, value in counters(h, minute + h.flip_offset, pilot):
                        add(family, "counter", {"tenant": tenant, **labels}, at, value)
    return [Series(f, k, dict(labels), points) for (f, k, labels), points in samples.items()]


def counters(h: Tenant, since_flip: int, pilot: bool) -> list[tuple[str, dict[str, str], float]]:
    """Each counter's value at ``since_flip`` minutes after the tenant's flip."""
    before, after = BEFORE + min(since_flip, 0), max(since_flip, 0)

    def total(rate: str) -> int:
        per_minute: tuple[float, float] = (getattr(h.before, rate), getattr(h.after, rate))
        return math.floor(per_minute[0] * before) + math.floor(per_minute[1] * after)

    bad_before = math.floor(h.before.bad_signatures * before)
    bad_after = math.floor(h.after.bad_signatures * after)
    rejected, would_reject = (bad_after, bad_before) if pilot else (0, bad_before + bad_after)
    return [
        (
            "ledger_http_responses",
            {"route": WITHDRAWALS, "status": "201", "code": "OK"},
            total("withdrawals") - total("insufficient"),
        ),
        (
            "ledger_http_responses",
            {"route": WITHDRAWALS, "status": "400", "code": "INSUFFICIENT_FUNDS"},
            total("insufficient"),
        ),
        ("ledger_webhook", {"outcome": "accepted"}, total("webhooks") - total("bad_signatures")),
        ("ledger_webhook", {"outcome": "would_reject"}, would_reject),
        ("ledger_webhook", {"outcome": "rejected_signature"}, rejected),
        ("ledger_balance_mismatch", {}, total("mismatches")),
    ]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    require_prometheus()
    with start_prometheus(tmp_path_factory.mktemp("prometheus"), history=history()) as server:
        yield server


def run(
    client: PrometheusClient,
    name: str,
    policy: DecisionPolicy = DEFAULT_POLICY,
    at: datetime | None = None,
) -> Decision:
    flip = slot_flip(name)
    pilots = SCENARIOS[name].pilots
    flips = {t: flip - timedelta(minutes=h.flip_offset) for t, h in pilots.items()}
    return decide(
        client, list(pilots), CONTROLS, flips, at or flip + timedelta(minutes=AFTER), policy
    )


def reasons(decision: Decision, outcome: Outcome | None = None) -> list[str]:
    return [f.reason for f in decision.findings if outcome is None or f.outcome is outcome]


# --- GO ------------------------------------------------------------------------------------


def test_pilots_like_the_control_cohort_go(client: PrometheusClient) -> None:
    decision = run(client, "go")
    assert decision.verdict is Verdict.GO, reasons(decision)
    assert [(t.tenant, t.verdict) for t in decision.tenants] == [
        ("t-1", Verdict.GO),
        ("t-2", Verdict.GO),
    ]
    assert "t-1 insufficient_funds 1.0% vs control 1.0% (x1.0 ≤ x2.0, p=0.5" in reasons(decision)[0]
    assert "t-2 webhook_401 0.5% vs control 0.5%" in "\n".join(reasons(decision))
    assert "t-1 balance_mismatch 0 in the last 3600s ≤ 0 → GO" in reasons(decision)
    # Windows: the last hour, and the hour before each of the two flips. Per window: the scrape
    # probe and errors + requests of both rate signals; the mismatches in the last hour only.
    assert decision.queries == 3 * 5 + 1
    result = to_check_result(decision)
    assert result.ok and result.summary == "GO: every signal clean for t-1, t-2"


def test_evidence_has_every_query_its_time_the_counts_and_the_thresholds(
    client: PrometheusClient,
) -> None:
    decision = run(client, "go")
    at = (slot_flip("go") + timedelta(minutes=AFTER)).isoformat().replace("+00:00", "Z")
    promql = [e for e in decision.evidence if e.label.startswith("PromQL @")]
    assert len(promql) == decision.queries
    assert sum(e.label == f"PromQL @ {at}" for e in promql) == 6
    everything = "\n".join(e.body for e in decision.evidence)
    assert 'tenant=~"t-1|t-2|c-1|c-2|c-3"}[3600s]' in everything
    assert '{tenant="c-3"} = 60' in everything
    counts = next(e.body for e in decision.evidence if e.label == "insufficient_funds counts")
    assert (
        f"insufficient_funds errors in the last 3600s up to {at}: t-1 60, t-2 60, "
        "control cohort (3) 180" in counts
    )
    summary = decision.evidence[-1]
    assert summary.label == "OPS-02 decision" and "verdict GO" in summary.body
    assert "breach when above x2 of both control and before flip with p < 0.01" in summary.body


# --- HOLD: data quality --------------------------------------------------------------------


def test_a_pilot_tenant_without_series_is_no_data(client: PrometheusClient) -> None:
    decision = run(client, "no_series")
    assert decision.verdict is Verdict.HOLD
    assert {f.outcome for f in decision.findings} == {Outcome.NO_DATA}
    assert (
        "t-1 insufficient_funds NO_DATA (no insufficient_funds errors series for t-1 in the "
        "last 3600s, not the same as 0) → HOLD" in reasons(decision)
    )
    result = to_check_result(decision)
    assert result.failure is not None and "missing data is never GO" in result.failure.remedy


def test_too_little_traffic_is_no_data(client: PrometheusClient) -> None:
    decision = run(client, "thin")
    assert decision.verdict is Verdict.HOLD
    assert (
        "t-1 webhook_401 NO_DATA (too little traffic: t-1 60 requests in the last 3600s; t-1 "
        "60 requests in the 3600s before its flip, < 100) → HOLD" in reasons(decision)
    )
    relaxed = replace(
        DecisionPolicy(),
        insufficient_funds=replace(DecisionPolicy().insufficient_funds, min_requests=50),
        webhook_401=replace(DecisionPolicy().webhook_401, min_requests=50),
    )
    assert run(client, "thin", relaxed).verdict is Verdict.GO


def test_a_scrape_gap_in_the_window_is_no_data(client: PrometheusClient) -> None:
    decision = run(client, "scrape_gap")
    assert decision.verdict is Verdict.HOLD
    assert reasons(decision, Outcome.NO_DATA) == [
        "t-1 scrape NO_DATA (scrape target ledger/ledger:8000 (min up 0) down during the last "
        "3600s) → HOLD"
    ]


def test_a_degraded_answer_is_no_data_with_the_reason() -> None:
    answer = {
        "status": "success",
        "data": {"resultType": "vector", "result": []},
        "warnings": ["remote read: store-2 unreachable"],
    }
    reply = Reply(json.dumps(answer), content_type="application/json")
    with LoopbackHTTP(lambda: reply) as stub, PrometheusClient(stub.url) as client:
        decision = run(client, "go")
    assert decision.verdict is Verdict.HOLD
    assert {f.outcome for f in decision.findings} == {Outcome.NO_DATA}
    assert all("degraded answer" in r and "store-2 unreachable" in r for r in reasons(decision))
    assert "HTTP 200: degraded answer" in decision.evidence[0].body


def test_a_failing_query_holds_its_signal_while_a_mismatch_still_rolls_back(
    client: PrometheusClient,
) -> None:
    policy = DecisionPolicy()
    broken = replace(
        policy,
        webhook_401=replace(policy.webhook_401, errors_query='sum(x{tenant=~"$tenants"}[$window]'),
    )
    decision = run(client, "mismatch", broken)
    assert decision.verdict is Verdict.ROLLBACK
    webhook = [f for f in decision.findings if f.signal == "webhook_401"]
    assert [f.outcome for f in webhook] == [Outcome.NO_DATA]
    assert "error answer: HTTP 400" in webhook[0].reason and "bad_data" in webhook[0].reason


def test_windows_that_cannot_be_placed_are_no_data(client: PrometheusClient) -> None:
    flip = slot_flip("go")
    early = run(client, "go", at=flip + timedelta(minutes=30))
    assert early.verdict is Verdict.HOLD
    assert any(
        "t-1 windows NO_DATA (flip at" in r and "is inside the last 3600s" in r
        for r in reasons(early)
    )
    unknown = decide(client, ["t-1"], CONTROLS, {}, flip + timedelta(minutes=AFTER))
    assert unknown.verdict is Verdict.HOLD
    assert reasons(unknown, Outcome.NO_DATA) == [
        "t-1 windows NO_DATA (no flip time: the window before it cannot be placed) → HOLD"
    ]


# --- HOLD: not attributable ----------------------------------------------------------------


def test_a_control_cohort_that_rose_too_holds(client: PrometheusClient) -> None:
    decision = run(client, "control_regressed")
    assert decision.verdict is Verdict.HOLD
    [finding] = [f for f in decision.findings if f.outcome is Outcome.NOT_ATTRIBUTABLE]
    assert finding.reason.startswith(
        "t-1 insufficient_funds 4.0% vs control 4.0% (x1.0 ≤ x2.0, p=0.5"
    )
    assert "; control rose too 1.0% → 4.0% (x4.0 > x2.0, p=" in finding.reason
    assert finding.reason.endswith("): not attributable → HOLD")
    failure = to_check_result(decision).failure
    assert failure is not None and "the control tenants rose too" in failure.remedy


# --- ROLLBACK ------------------------------------------------------------------------------


def test_a_mismatch_rise_rolls_back_naming_the_tenant_and_flags(client: PrometheusClient) -> None:
    decision = run(client, "mismatch")
    assert decision.verdict is Verdict.ROLLBACK
    assert reasons(decision, Outcome.BREACH) == [
        "t-1 balance_mismatch 3 in the last 3600s > 0 → ROLLBACK"
    ]
    plan = RollbackPlan(tenants={"t-1": ("ledger_enforce_balance",)})
    failure = to_check_result(decision, rollback=plan).failure
    assert failure is not None
    assert failure.title == "OPS-02 decision: ROLLBACK for t-1"
    assert "t-1: ledger_enforce_balance." in failure.remedy
    default = to_check_result(decision).failure
    assert default is not None
    assert "t-1: ledger_enforce_balance, then webhook_signature_enforced" in default.remedy


def test_a_400_surge_in_one_tenant_rolls_it_back(client: PrometheusClient) -> None:
    decision = run(client, "surge")
    assert decision.verdict is Verdict.ROLLBACK
    assert [(t.tenant, t.verdict) for t in decision.tenants] == [
        ("t-1", Verdict.ROLLBACK),
        ("t-2", Verdict.GO),
    ]
    assert decision.reasons[0] == (
        "t-1 insufficient_funds 3.4% vs control 1.0% (x3.4 > x2.0, p=5e-32), "
        "before flip 1.0% (x3.4 > x2.0, p=8e-20) → ROLLBACK"
    )
    failure = to_check_result(decision).failure
    assert failure is not None and failure.seen.splitlines()[0] == decision.reasons[0]
    assert "t-2" not in failure.remedy


def test_the_breach_action_is_configurable(client: PrometheusClient) -> None:
    policy = DecisionPolicy()
    hold = replace(
        policy, insufficient_funds=replace(policy.insufficient_funds, action=Verdict.HOLD)
    )
    decision = run(client, "surge", hold)
    assert decision.verdict is Verdict.HOLD
    assert decision.reasons[0].endswith("→ HOLD")
    failure = to_check_result(decision).failure
    assert failure is not None and "investigate the pilot tenants' rise" in failure.remedy


# --- a zero baseline: significance decides -------------------------------------------------


def test_two_errors_over_a_zero_baseline_go(client: PrometheusClient) -> None:
    decision = run(client, "zero_blip")
    assert decision.verdict is Verdict.GO, reasons(decision)
    assert reasons(decision)[0] == (
        "t-1 insufficient_funds 0.033% vs control 0% (x∞ > x2.0, p=0.062), "
        "before flip 0% (x∞ > x2.0, p=0.25) → GO"
    )


def test_nine_errors_over_a_zero_baseline_roll_back(client: PrometheusClient) -> None:
    decision = run(client, "zero_surge")
    assert decision.verdict is Verdict.ROLLBACK
    assert decision.reasons[0] == (
        "t-1 insufficient_funds 0.15% vs control 0% (x∞ > x2.0, p=4e-6), "
        "before flip 0% (x∞ > x2.0, p=2e-3) → ROLLBACK"
    )


# --- dry run -------------------------------------------------------------------------------


def test_a_dry_run_passes_and_says_what_it_would_decide(client: PrometheusClient) -> None:
    decision = run(client, "surge")
    result = to_check_result(decision, dry_run=True)
    assert result.ok
    assert result.summary == f"DRY RUN: would decide ROLLBACK: {decision.reasons[0]}"
    would = result.evidence[-1]
    assert would.label == "DRY RUN: the failure it would report"
    assert "Roll back now" in would.body and "t-1: ledger_enforce_balance" in would.body


# --- inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pilots", "controls", "message"),
    [
        ([], ["c-1"], "at least one pilot"),
        (["t-1"], ["t-1"], "listed twice"),
    ],
)
def test_tenants_are_validated(pilots: list[str], controls: list[str], message: str) -> None:
    client = PrometheusClient("http://127.0.0.1:9")
    with pytest.raises(ValueError, match=message):
        decide(client, pilots, controls, {}, datetime.now(UTC))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"window": timedelta(seconds=0.5)}, "whole number of seconds"),
        ({"scrape_up_query": "up"}, r"must contain \$window"),
    ],
)
def test_policy_is_validated(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(DecisionPolicy(), **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_requests": 0}, "min_requests"),
        ({"max_ratio": 0.5}, "max_ratio"),
        ({"alpha": 1.0}, "alpha"),
        ({"action": Verdict.GO}, "HOLD or ROLLBACK"),
        ({"errors_query": "sum(x[$window])"}, r"must contain \$tenants"),
        (
            {"requests_query": 'x{a=~"b$"}[$window] $tenants'},
            r"only \$window, \$tenants and \$pilots",
        ),
    ],
)
def test_signals_are_validated(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(DecisionPolicy().insufficient_funds, **change)  # type: ignore[arg-type]
