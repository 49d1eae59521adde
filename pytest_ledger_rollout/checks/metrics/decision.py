"""Runbook 3.3 (OPS-02): GO, HOLD or ROLLBACK for the pilot tenants, from Prometheus.

Data quality comes first and never yields GO: the scrape target must have been up through
every window, every pilot and control tenant must have its series (each query declares whether
empty means zero), and every window must hold enough requests. A gap, a degraded answer, NaN or
an error makes the signal it touches NO_DATA, which is HOLD; other signals are still judged, so
a mismatch rise seen beside a gap is still ROLLBACK (the worst verdict wins).

Each pilot tenant is judged per signal against the control cohort in the same window *and*
against its own window before its flip; a breach needs both, each with a large enough ratio and
an exact count test (``counts``) below alpha, which stays valid at a zero baseline. When the
control cohort rose too against its own window before that flip, the rise is not attributable
to the pilot: HOLD. Any balance mismatch in a pilot tenant's window is ROLLBACK.

Queries are per window, never per tenant: each is ``sum by (tenant)`` over one regex matcher
for all pilot and control tenants, so 1,000 control tenants cost the same number of queries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from string import Template

from pytest_ledger_rollout.checks.metrics.counts import RateComparison, WindowCounts, compare_rates
from pytest_ledger_rollout.checks.metrics.prometheus import (
    PrometheusClient,
    PrometheusError,
    iso_utc,
)
from pytest_ledger_rollout.checks.metrics.webhook_watch import (
    check_rate_test,
    check_window,
    rose,
    window_text,
)
from pytest_ledger_rollout.results import (
    CheckResult,
    Evidence,
    Failure,
    failed,
    passed,
    table_evidence,
)


class Verdict(StrEnum):
    GO = "GO"
    HOLD = "HOLD"
    ROLLBACK = "ROLLBACK"

    @property
    def severity(self) -> int:
        return list(Verdict).index(self)


class Outcome(StrEnum):
    CLEAN = "clean"
    BREACH = "breach"
    NOT_ATTRIBUTABLE = "not attributable"  # the control cohort rose too
    NO_DATA = "no data"


# Defaults for the reference service (README "Reference service API"): every tenant's 400,
# webhook outcome and mismatch series exist at 0, so an empty answer is a gap, not zero.
# $window becomes the window as a PromQL duration, $tenants a regex of every pilot and control
# tenant and $pilots one of the pilot tenants (both escaped for a double-quoted string).
WITHDRAWALS = 'route="/wallets/{wallet_id}/withdrawals"'
INSUFFICIENT_FUNDS_QUERY = (
    f'sum by (tenant) (increase(ledger_http_responses_total{{{WITHDRAWALS}, status="400", '
    'code="INSUFFICIENT_FUNDS", tenant=~"$tenants"}[$window]))'
)
WITHDRAWAL_REQUESTS_QUERY = (
    f"sum by (tenant) (increase(ledger_http_responses_total{{{WITHDRAWALS}, "
    'tenant=~"$tenants"}[$window]))'
)
# A bad signature is a 401 where enforcement is on and `would_reject` where it is off (before
# the flip, and in control tenants). Counting both keeps the baseline and the control cohort
# comparable; the 401 counter alone would be zero there by construction.
SIGNATURE_INVALID_QUERY = (
    'sum by (tenant) (increase(ledger_webhook_total{outcome=~"rejected_signature|would_reject", '
    'tenant=~"$tenants"}[$window]))'
)
WEBHOOK_REQUESTS_QUERY = (
    'sum by (tenant) (increase(ledger_webhook_total{tenant=~"$tenants"}[$window]))'
)
MISMATCH_QUERY = (
    'sum by (tenant) (increase(ledger_balance_mismatch_total{tenant=~"$tenants"}[$window]))'
)
# The worst `up` through the window of every scrape target that exported a pilot tenant's
# series in it, whatever its job is called; no such target is "no series", a gap. Selecting by
# pilot keeps the probe from reading every tenant's series (its cost would grow with them).
SCRAPE_UP_QUERY = (
    "min by (job, instance) (min_over_time(up[$window])) and on (job, instance) group by "
    '(job, instance) (last_over_time(ledger_balance_mismatch_total{tenant=~"$pilots"}[$window]))'
)


def _check_template(name: str, template: str, *placeholders: str) -> None:
    missing = [p for p in placeholders if p not in template]
    if missing:
        raise ValueError(f"{name} must contain {' and '.join(missing)}: {template}")
    try:
        Template(template).substitute(window="1s", tenants="t", pilots="t")
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"{name}: only $window, $tenants and $pilots may follow a $ ($$ for $): {exc}"
        ) from None


@dataclass(frozen=True)
class RateSignal:
    """A share of requests that must not rise in a pilot tenant (errors / requests)."""

    name: str
    errors_query: str  # sum by (tenant) over $window for $tenants
    requests_query: str
    min_requests: int = 100  # per pilot tenant and per control cohort, in every window
    max_ratio: float = 2.0  # a breach needs a share above x max_ratio of the comparison's ...
    alpha: float = 0.01  # ... and a one-sided exact p-value below alpha
    action: Verdict = Verdict.ROLLBACK  # what a breach decides: HOLD or ROLLBACK
    errors_empty_means_zero: bool = False  # True only for a service that creates it lazily

    def __post_init__(self) -> None:
        _check_template(f"{self.name}.errors_query", self.errors_query, "$window", "$tenants")
        _check_template(f"{self.name}.requests_query", self.requests_query, "$window", "$tenants")
        check_rate_test(f"{self.name}.", self.min_requests, self.max_ratio, self.alpha)
        if self.action is Verdict.GO:
            raise ValueError(f"{self.name}.action must be HOLD or ROLLBACK")

    def breached(self, comparison: RateComparison) -> bool:
        return rose(comparison.ratio, comparison.p_value, self.max_ratio, self.alpha)


@dataclass(frozen=True)
class MismatchSignal:
    """Balance mismatches in a pilot tenant's window: more than ``max_count`` is ROLLBACK."""

    name: str = "balance_mismatch"
    query: str = MISMATCH_QUERY
    max_count: int = 0
    empty_means_zero: bool = False

    def __post_init__(self) -> None:
        _check_template(f"{self.name}.query", self.query, "$window", "$tenants")
        if not 0 <= self.max_count < math.inf:
            raise ValueError(f"{self.name}.max_count must be >= 0: {self.max_count}")


@dataclass(frozen=True)
class DecisionPolicy:
    window: timedelta = timedelta(hours=1)  # ends at the evaluation time, after every flip
    baseline_window: timedelta = timedelta(hours=1)  # ends at each pilot tenant's flip
    scrape_up_query: str = SCRAPE_UP_QUERY  # by (job, instance); each must be 1 in every window
    insufficient_funds: RateSignal = RateSignal(
        "insufficient_funds", INSUFFICIENT_FUNDS_QUERY, WITHDRAWAL_REQUESTS_QUERY
    )
    webhook_401: RateSignal = RateSignal(
        "webhook_401", SIGNATURE_INVALID_QUERY, WEBHOOK_REQUESTS_QUERY
    )
    balance_mismatch: MismatchSignal = MismatchSignal()

    def __post_init__(self) -> None:
        for name in ("window", "baseline_window"):
            check_window(name, getattr(self, name))
        _check_template("scrape_up_query", self.scrape_up_query, "$window")
        names = [*(s.name for s in self.rate_signals), self.balance_mismatch.name]
        if len(set(names)) != len(names):
            raise ValueError(f"signal names must differ: {names}")

    @property
    def rate_signals(self) -> tuple[RateSignal, ...]:
        return (self.insufficient_funds, self.webhook_401)


DEFAULT_POLICY = DecisionPolicy()


@dataclass(frozen=True)
class Finding:
    """One pilot tenant's outcome for one signal (or data-quality probe)."""

    tenant: str
    signal: str
    outcome: Outcome
    verdict: Verdict
    detail: str  # the figures, or why there are none
    figures: Figures | None = None  # the same figures, column by column for the report

    @property
    def reason(self) -> str:
        return f"{self.tenant} {self.signal} {self.detail} → {self.verdict}"

    def row(self) -> tuple[str, ...]:
        """The finding's row of the OPS-02 table in the sign-off."""
        figures = self.figures or Figures()
        return (
            self.tenant, self.signal, figures.pilot, figures.control, figures.before_flip,
            figures.ratio, figures.p, str(self.outcome), str(self.verdict),
        )  # fmt: skip


@dataclass(frozen=True)
class Figures:
    pilot: str = "—"
    control: str = "—"
    before_flip: str = "—"
    ratio: str = "—"  # vs control; vs its own window before the flip
    p: str = "—"


TABLE_HEADER = (
    "tenant", "signal", "pilot", "control", "pilot before flip",
    "ratio (vs control; vs before)", "p (vs control; vs before)", "outcome", "verdict",
)  # fmt: skip


@dataclass(frozen=True)
class TenantVerdict:
    tenant: str
    verdict: Verdict  # the worst of its findings
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class Decision:
    at: datetime
    verdict: Verdict  # the worst of the tenants'
    tenants: tuple[TenantVerdict, ...]
    evidence: tuple[Evidence, ...]
    queries: int  # PromQL queries sent: per window and signal, independent of the tenant count

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for t in self.tenants for f in t.findings)

    @property
    def reasons(self) -> tuple[str, ...]:
        """One line per finding, the ones that stop a GO first."""
        ordered = sorted(self.findings, key=lambda f: -f.verdict.severity)
        return tuple(f.reason for f in ordered)


@dataclass(frozen=True)
class RollbackPlan:
    """Flags to turn off per tenant on ROLLBACK, in this order (the reverse of the flips)."""

    default: tuple[str, ...] = ("ledger_enforce_balance", "webhook_signature_enforced")
    tenants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def flags(self, tenant: str) -> tuple[str, ...]:
        return self.tenants.get(tenant, self.default)


DEFAULT_ROLLBACK = RollbackPlan()


# --- the decision --------------------------------------------------------------------------


def decide(
    client: PrometheusClient,
    pilots: Sequence[str],
    controls: Sequence[str],
    flips: Mapping[str, datetime],
    at: datetime,
    policy: DecisionPolicy = DEFAULT_POLICY,
    *,
    now: datetime | None = None,
) -> Decision:
    """Decide at ``at`` (tz-aware) for ``pilots`` against ``controls``; ``flips``: when
    signature/enforce went on for each pilot tenant.

    A pilot tenant whose windows cannot be placed (no flip time, a flip inside the window, an
    evaluation time in the future) is NO_DATA for the rate signals; its mismatches are still
    judged.
    """
    _check_tenants(pilots, controls)
    if any(when.tzinfo is None for when in (at, *flips.values())):
        raise ValueError("the evaluation and flip times must be timezone-aware")
    reader = _Reader(client, pilots, controls)
    current = _Window(at, policy.window, f"the last {window_text(policy.window)}")
    baselines, unplaced = _place(pilots, flips, current, policy, now or datetime.now(UTC))
    windows = [current, *sorted(set(baselines.values()), key=lambda w: w.end)]
    whose = {w: [t for t in pilots if w in (current, baselines.get(t))] for w in windows}
    findings: dict[str, list[Finding]] = {t: [] for t in pilots}
    for tenant, why in unplaced.items():
        findings[tenant].append(_no_data(tenant, "windows", why))

    scrape_gaps = {w: reader.scrape_gap(policy.scrape_up_query, w) for w in windows}
    for tenant in pilots:
        for window in (current, baselines.get(tenant)):
            gap = scrape_gaps.get(window) if window else None
            if gap:
                findings[tenant].append(_no_data(tenant, "scrape", gap))

    for signal in policy.rate_signals:
        rates = {w: reader.rates(signal, w) for w in windows}
        reader.figures(signal.name, rates, whose, controls)
        for tenant, baseline in baselines.items():
            findings[tenant].append(
                _rate_finding(signal, tenant, controls, rates[current], rates[baseline])
            )

    mismatch = policy.balance_mismatch
    mismatches = reader.column(mismatch.name, mismatch.query, current, mismatch.empty_means_zero)
    reader.figures(mismatch.name, {current: mismatches}, whose, controls)
    for tenant in pilots:
        findings[tenant].append(_mismatch_finding(mismatch, tenant, mismatches))

    tenants = tuple(
        TenantVerdict(t, _worst(f.verdict for f in findings[t]), tuple(findings[t])) for t in pilots
    )
    decision = Decision(at, _worst(t.verdict for t in tenants), tenants, (), reader.queries)
    summary = "\n".join(
        [
            f"verdict {decision.verdict} at {iso_utc(at)}, from {reader.queries} queries",
            f"pilot tenants: {', '.join(pilots)}; {len(controls)} control tenants",
            *(f"flip of {t}: {iso_utc(flips[t])}" for t in pilots if t in flips),
            *_policy_lines(policy),
            *decision.reasons,
        ]
    )
    table = table_evidence(
        f"OPS-02 per pilot tenant (window ending {iso_utc(at)})",
        TABLE_HEADER,
        (f.row() for f in decision.findings),
    )
    evidence = (*reader.evidence, table, Evidence("OPS-02 decision", summary))
    return replace(decision, evidence=evidence)


def _check_tenants(pilots: Sequence[str], controls: Sequence[str]) -> None:
    if not pilots or not controls:
        raise ValueError("the decision needs at least one pilot and one control tenant")
    everyone = [*pilots, *controls]
    if len(set(everyone)) != len(everyone):
        twice = sorted({t for t in everyone if everyone.count(t) > 1})
        raise ValueError(f"tenants listed twice (pilot and control are disjoint): {twice}")


def _place(
    pilots: Sequence[str],
    flips: Mapping[str, datetime],
    current: _Window,
    policy: DecisionPolicy,
    now: datetime,
) -> tuple[dict[str, _Window], dict[str, str]]:
    """Each pilot tenant's window before its flip, or why its windows cannot be placed."""
    baselines: dict[str, _Window] = {}
    unplaced: dict[str, str] = {}
    starts = current.end - current.length
    for tenant in pilots:
        flip = flips.get(tenant)
        if current.end > now:
            unplaced[tenant] = (
                f"the evaluation time {iso_utc(current.end)} is in the future; "
                f"now is {iso_utc(now)}"
            )
        elif flip is None:
            unplaced[tenant] = "no flip time: the window before it cannot be placed"
        elif flip > starts:
            unplaced[tenant] = (
                f"flip at {iso_utc(flip)} is inside {current.label}: evaluate at or after "
                f"{iso_utc(flip + current.length)}"
            )
        else:
            label = f"the {window_text(policy.baseline_window)} before its flip"
            baselines[tenant] = _Window(flip, policy.baseline_window, label)
    return baselines, unplaced


def _rate_finding(
    signal: RateSignal, tenant: str, controls: Sequence[str], now: _Rates, before: _Rates
) -> Finding:
    try:
        pilot_now, control_now = now.counts([tenant]), now.counts(controls)
        pilot_before, control_before = before.counts([tenant]), before.counts(controls)
    except _NoData as gap:
        return _no_data(tenant, signal.name, str(gap))
    thin = [
        f"{who} {counts.requests} requests in {window.label}"
        for who, counts, window in (
            (tenant, pilot_now, now.window),
            (tenant, pilot_before, before.window),
            ("control cohort", control_now, now.window),
            ("control cohort", control_before, before.window),
        )
        if counts.requests < signal.min_requests
    ]
    if thin:
        return _no_data(
            tenant, signal.name, f"too little traffic: {'; '.join(thin)}, < {signal.min_requests}"
        )
    vs_control = compare_rates(control_now, pilot_now)
    vs_self = compare_rates(pilot_before, pilot_now)
    detail = (
        f"{_pct(pilot_now.share)} vs control {_pct(control_now.share)} "
        f"({_test(signal, vs_control)}), before flip {_pct(pilot_before.share)} "
        f"({_test(signal, vs_self)})"
    )
    figures = Figures(
        _pct(pilot_now.share),
        _pct(control_now.share),
        _pct(pilot_before.share),
        f"{_ratio(vs_control)}; {_ratio(vs_self)}",
        f"{_p(vs_control.p_value)}; {_p(vs_self.p_value)}",
    )
    if signal.breached(vs_self):
        control_rise = compare_rates(control_before, control_now)
        if signal.breached(control_rise):
            return Finding(
                tenant,
                signal.name,
                Outcome.NOT_ATTRIBUTABLE,
                Verdict.HOLD,
                f"{detail}; control rose too {_pct(control_before.share)} → "
                f"{_pct(control_now.share)} ({_test(signal, control_rise)}): not attributable",
                figures,
            )
        if signal.breached(vs_control):
            return Finding(tenant, signal.name, Outcome.BREACH, signal.action, detail, figures)
    return Finding(tenant, signal.name, Outcome.CLEAN, Verdict.GO, detail, figures)


def _mismatch_finding(signal: MismatchSignal, tenant: str, column: _Column) -> Finding:
    try:
        count = column.total([tenant])
    except _NoData as gap:
        return _no_data(tenant, signal.name, str(gap))
    detail = f"{count} in {column.window.label}"
    figures = Figures(pilot=str(count))
    if not count <= signal.max_count:
        return Finding(
            tenant, signal.name, Outcome.BREACH, Verdict.ROLLBACK,
            f"{detail} > {signal.max_count}", figures,
        )  # fmt: skip
    return Finding(
        tenant, signal.name, Outcome.CLEAN, Verdict.GO, f"{detail} ≤ {signal.max_count}", figures
    )


def _no_data(tenant: str, signal: str, why: str) -> Finding:
    return Finding(tenant, signal, Outcome.NO_DATA, Verdict.HOLD, f"NO_DATA ({why})")


def _worst(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=lambda v: v.severity, default=Verdict.GO)


# --- reading Prometheus --------------------------------------------------------------------


class _NoData(Exception):
    pass


@dataclass(frozen=True)
class _Window:
    end: datetime
    length: timedelta
    label: str  # short, for reason lines; evidence carries the times


@dataclass(frozen=True)
class _Column:
    """One query's counts per tenant, or why it gave none."""

    name: str
    window: _Window
    counts: Mapping[str, int]
    error: str | None = None

    def total(self, tenants: Sequence[str]) -> int:
        if self.error is not None:
            raise _NoData(f"{self.name} in {self.window.label}: {self.error}")
        missing = [t for t in tenants if t not in self.counts]
        if missing:
            raise _NoData(
                f"no {self.name} series for {_names(missing)} in {self.window.label}, "
                "not the same as 0"
            )
        return sum(self.counts[t] for t in tenants)

    def line(self, who: str, tenants: Sequence[str]) -> str:
        try:
            return f"{who} {self.total(tenants)}"
        except _NoData as gap:
            return f"{who} NO_DATA ({gap})"


@dataclass(frozen=True)
class _Rates:
    """A rate signal's errors and requests in one window."""

    errors: _Column
    requests: _Column

    @property
    def window(self) -> _Window:
        return self.requests.window

    def counts(self, tenants: Sequence[str]) -> WindowCounts:
        return WindowCounts(self.errors.total(tenants), self.requests.total(tenants))


class _Reader:
    """Sends each query once for every tenant and keeps every answer (or error) as evidence."""

    def __init__(
        self, client: PrometheusClient, pilots: Sequence[str], controls: Sequence[str]
    ) -> None:
        self._client = client
        self._tenants = [*pilots, *controls]
        self._matchers = {"tenants": _tenant_regex(self._tenants), "pilots": _tenant_regex(pilots)}
        self.evidence: list[Evidence] = []
        self.queries = 0

    def _query(
        self, template: str, window: _Window, key: tuple[str, ...], allow_empty: bool
    ) -> dict[tuple[str, ...], float]:
        promql = Template(template).substitute(self._matchers, window=window_text(window.length))
        self.queries += 1
        try:
            vector = self._client.query(promql, window.end, key=key, allow_empty=allow_empty)
        except PrometheusError as error:
            self.evidence.append(error.evidence)
            raise _NoData(f"{error.reason}: {error.detail}") from None
        self.evidence.append(vector.evidence())
        return dict(vector.values)

    def scrape_gap(self, template: str, window: _Window) -> str | None:
        try:
            ups = self._query(template, window, ("job", "instance"), allow_empty=False)
        except _NoData as gap:
            return f"scrape probe over {window.label}: {gap}"
        down = [
            f"{job}/{instance} (min up {value:g})"
            for (job, instance), value in ups.items()
            if not value >= 1  # NaN is down
        ]
        return f"scrape target {_names(down)} down during {window.label}" if down else None

    def column(self, name: str, template: str, window: _Window, empty_means_zero: bool) -> _Column:
        try:
            # Empty is allowed here: a missing tenant is judged per tenant, with its name.
            values = self._query(template, window, ("tenant",), allow_empty=True)
        except _NoData as gap:
            return _Column(name, window, {}, str(gap))
        counts = {key[0]: round(value) for key, value in values.items()}  # increase() extrapolates
        negative = [t for t, count in counts.items() if count < 0]
        if negative:
            return _Column(
                name,
                window,
                {},
                f"negative count for {_names(negative)}: count with increase() over a counter",
            )
        if empty_means_zero:
            counts = {t: counts.get(t, 0) for t in self._tenants}
        return _Column(name, window, counts)

    def rates(self, signal: RateSignal, window: _Window) -> _Rates:
        return _Rates(
            self.column(
                f"{signal.name} errors", signal.errors_query, window, signal.errors_empty_means_zero
            ),
            self.column(f"{signal.name} requests", signal.requests_query, window, False),
        )

    def figures(
        self,
        name: str,
        columns: Mapping[_Window, _Column | _Rates],
        pilots: Mapping[_Window, Sequence[str]],
        controls: Sequence[str],
    ) -> None:
        """The counts that entered the decision: per pilot tenant whose window it is, and for
        the control cohort."""
        lines = []
        for window, column in columns.items():
            parts = (column.errors, column.requests) if isinstance(column, _Rates) else (column,)
            who = [
                *((t, [t]) for t in pilots[window]),
                (f"control cohort ({len(controls)})", controls),
            ]
            lines += [
                f"{part.name} in {window.label} up to {iso_utc(window.end)}: "
                + ", ".join(part.line(w, ts) for w, ts in who)
                for part in parts
            ]
        self.evidence.append(Evidence(f"{name} counts", "\n".join(lines)))


# --- text ----------------------------------------------------------------------------------


_RE2_SPECIAL = re.compile(r"[\\.+*?()|\[\]{}^$]")


def _tenant_regex(tenants: Sequence[str]) -> str:
    """An RE2 alternation matching exactly these tenants, escaped for a "..." PromQL string."""
    pattern = "|".join(_RE2_SPECIAL.sub(lambda m: "\\" + m.group(), t) for t in tenants)
    return pattern.replace("\\", "\\\\").replace('"', '\\"')


def _names(items: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _pct(share: float) -> str:
    return f"{share:.1%}" if share >= 0.01 else f"{share * 100:.2g}%"


def _test(signal: RateSignal, c: RateComparison) -> str:
    above = ">" if c.ratio > signal.max_ratio else "≤"
    return f"{_ratio(c)} {above} x{signal.max_ratio:.1f}, p={_p(c.p_value)}"


def _ratio(c: RateComparison) -> str:
    return "x∞" if c.ratio == float("inf") else f"x{c.ratio:.1f}"


def _p(p: float) -> str:
    """Like 4e-4 or 0.25: two digits where they matter, one for tiny values."""
    if p == 0 or p >= 0.01:
        return f"{p:.2g}"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _policy_lines(policy: DecisionPolicy) -> list[str]:
    lines = [
        f"window {window_text(policy.window)} up to the evaluation time; baseline "
        f"{window_text(policy.baseline_window)} before each flip",
        f"scrape probe: {policy.scrape_up_query}",
    ]
    for s in policy.rate_signals:
        lines += [
            f"{s.name}: breach when above x{s.max_ratio:g} of both control and before flip "
            f"with p < {s.alpha:g}, → {s.action}; min {s.min_requests} requests per window",
            f"  errors: {s.errors_query}",
            f"  requests: {s.requests_query}",
        ]
    m = policy.balance_mismatch
    lines.append(f"{m.name}: more than {m.max_count} in the window → ROLLBACK; {m.query}")
    return lines


# --- as a check ----------------------------------------------------------------------------

EXPECTED = (
    "GO: for every pilot tenant complete data (scrape up, every series, enough requests in "
    "every window), no balance mismatch, and no signal above its ratio with p < alpha against "
    "both the control cohort and its own window before the flip"
)

_HOLD_REMEDIES = {
    Outcome.NO_DATA: "Do not widen: close the data gaps named above (a scrape target down, a "
    "tenant without series, too little traffic: wait for more or widen the windows, a failing "
    "query) and rerun 3.3; missing data is never GO.",
    Outcome.NOT_ATTRIBUTABLE: "Do not widen: the control tenants rose too, so the pilot's rise "
    "cannot be told from a wider cause (a release, a provider incident); find and fix it, then "
    "rerun 3.3 over a window after it.",
    Outcome.BREACH: "Do not widen: investigate the pilot tenants' rise named above (the config "
    "holds on this signal rather than rolling back); rerun 3.3 once it is explained or fixed.",
}


def to_check_result(
    decision: Decision, *, dry_run: bool = False, rollback: RollbackPlan = DEFAULT_ROLLBACK
) -> CheckResult:
    """GO passes; HOLD and ROLLBACK fail, unless ``dry_run``: then it passes and says what it
    would have decided (the would-be failure is kept as evidence)."""
    prefix = "DRY RUN: would decide " if dry_run else ""
    if decision.verdict is Verdict.GO:
        pilots = ", ".join(t.tenant for t in decision.tenants)
        return passed(f"{prefix}GO: every signal clean for {pilots}", *decision.evidence)
    failure = Failure(
        f"OPS-02 decision: {decision.verdict} for "
        + ", ".join(t.tenant for t in decision.tenants if t.verdict is decision.verdict),
        expected=EXPECTED,
        seen="\n".join(decision.reasons),
        remedy=_remedy(decision, rollback),
    )
    if not dry_run:
        return failed(failure, *decision.evidence)
    would = "\n".join([failure.title, failure.seen, failure.remedy])
    return passed(
        f"{prefix}{decision.verdict}: {decision.reasons[0]}",
        *decision.evidence,
        Evidence("DRY RUN: the failure it would report", would),
    )


def _remedy(decision: Decision, rollback: RollbackPlan) -> str:
    steps = []
    revert = [t.tenant for t in decision.tenants if t.verdict is Verdict.ROLLBACK]
    if revert:
        plan = "; ".join(f"{t}: {', then '.join(rollback.flags(t))}" for t in revert)
        steps.append(
            f"Roll back now, per tenant, turning these flags off in this order: {plan}. Keep "
            "every other tenant as it is. Then find the cause of the signals named above, fix "
            "it, and redo 3.2 and 3.3 for these tenants before widening."
        )
    held = {f.outcome for f in decision.findings if f.verdict is Verdict.HOLD}
    steps += [remedy for outcome, remedy in _HOLD_REMEDIES.items() if outcome in held]
    return "\n".join(steps)
