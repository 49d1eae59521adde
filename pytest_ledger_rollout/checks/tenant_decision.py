"""The GO / HOLD / ROLLBACK decision for the tenants whose flags flipped (the runbook's OPS-02),
as the PRD phases take it: flip times from the flags, the signals from Prometheus,
and the decision as a typed value (``Ops02Decision``) that 3.3 hands to the run record: the
sign-off's GO / HOLD / ROLLBACK. Its display string is only ever shown, never parsed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pytest_ledger_rollout.checks.flags import FlagState, effective
from pytest_ledger_rollout.checks.metrics.decision import (
    DecisionPolicy,
    RollbackPlan,
    Verdict,
    decide,
    to_check_result,
)
from pytest_ledger_rollout.checks.metrics.prometheus import PrometheusClient
from pytest_ledger_rollout.results import CheckResult, Failure, failed


@dataclass(frozen=True)
class Ops02Decision:
    """What OPS-02 decided: GO, HOLD or ROLLBACK, or (a dry run) what it would have decided.
    Only a GO that is not a dry run lets the rollout widen."""

    verdict: Verdict
    dry_run: bool = False

    @property
    def go(self) -> bool:
        return self.verdict is Verdict.GO and not self.dry_run

    def __str__(self) -> str:
        """For people (the verdict line, the page): never read back."""
        return f"DRY RUN (would decide {self.verdict})" if self.dry_run else str(self.verdict)


@dataclass(frozen=True)
class Ops02Outcome:
    """The check's result (evidence, finding) and the decision it reached."""

    result: CheckResult
    decision: Ops02Decision


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


def decide_ops02(
    prometheus_url: str | None,
    pilots: Sequence[str],
    controls: Sequence[str],
    flips: dict[str, datetime],
    policy: DecisionPolicy,
    *,
    at: datetime | None = None,
    dry_run: bool = False,
    rollback: RollbackPlan | None = None,
) -> Ops02Outcome:
    """The decision for ``pilots`` against ``controls`` at ``at`` (default now), and the check
    result that shows it; a decision that cannot be made is HOLD."""
    if prometheus_url is None or not pilots or not controls:
        missing = (
            "no prometheus_url for this target"
            if prometheus_url is None
            else "no pilot tenants"
            if not pilots
            else "no control tenants"
        )
        result = failed(
            Failure(
                "The OPS-02 decision cannot be made",
                expected="Prometheus, the tenants to judge and a control cohort",
                seen=missing,
                remedy="Set prometheus_url for the target and the tenants in the rollout config.",
            )
        )
        return Ops02Outcome(result, Ops02Decision(Verdict.HOLD))
    with PrometheusClient(prometheus_url) as client:
        decision = decide(client, pilots, controls, flips, at or datetime.now(UTC), policy)
    result = to_check_result(decision, dry_run=dry_run, rollback=rollback or RollbackPlan())
    return Ops02Outcome(result, Ops02Decision(decision.verdict, dry_run=dry_run))
