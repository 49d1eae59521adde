"""OPS-02 as the PRD phases run it: flip times from the flags, the decision from Prometheus,
and the decision recorded as a fact of the run (the sign-off's GO / HOLD / ROLLBACK)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from pytest_ledger_rollout.checks.flags import FlagState, effective
from pytest_ledger_rollout.checks.metrics.decision import (
    DecisionPolicy,
    RollbackPlan,
    decide,
    to_check_result,
)
from pytest_ledger_rollout.checks.metrics.prometheus import PrometheusClient
from pytest_ledger_rollout.results import CheckResult, Failure, failed

DECISION_FACT = "OPS-02 decision"  # the environment fact a deciding phase's 3.3 records


def tenant_flips(
    states: Sequence[FlagState], keys: Sequence[str], tenants: Sequence[str]
) -> dict[str, datetime]:
    """Each tenant's flip time (``flags.effective``: its own row's change time, else the global
    row's) of ``keys``; the later flip wins, unknown times are left out."""
    flips: dict[str, datetime] = {}
    for state in effective(states, tenants, keys):
        if state.tenant is not None and state.changed_at is not None:
            flips[state.tenant] = max(state.changed_at, flips.get(state.tenant, state.changed_at))
    return flips


def check_decision(
    prometheus_url: str | None,
    pilots: Sequence[str],
    controls: Sequence[str],
    flips: dict[str, datetime],
    policy: DecisionPolicy,
    *,
    at: datetime | None = None,
    dry_run: bool = False,
    rollback: RollbackPlan | None = None,
) -> CheckResult:
    """The decision for ``pilots`` against ``controls`` at ``at`` (default now)."""
    if prometheus_url is None or not pilots or not controls:
        missing = (
            "no prometheus_url for this target"
            if prometheus_url is None
            else "no pilot tenants"
            if not pilots
            else "no control tenants"
        )
        return failed(
            Failure(
                "The OPS-02 decision cannot be made",
                expected="Prometheus, the tenants to judge and a control cohort",
                seen=missing,
                remedy="Set prometheus_url for the target and the tenants in the rollout config.",
            ),
            **{DECISION_FACT: "HOLD"},
        )
    with PrometheusClient(prometheus_url) as client:
        decision = decide(client, pilots, controls, flips, at or datetime.now(UTC), policy)
    result = to_check_result(decision, dry_run=dry_run, rollback=rollback or RollbackPlan())
    verdict = f"DRY RUN (would decide {decision.verdict})" if dry_run else str(decision.verdict)
    return replace(result, facts={**result.facts, DECISION_FACT: verdict})
