"""PRD-PILOT (runbook Phase 3): signature and balance enforcement for 1-3 low-risk tenants, and
the OPS-02 decision to widen. Read-only on production; ends with GO, HOLD or ROLLBACK."""

import pytest
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import FlagRelation, FlagState
from pytest_ledger_rollout.checks.ledger import check_no_mismatch
from pytest_ledger_rollout.checks.metrics.decision import RollbackPlan
from pytest_ledger_rollout.checks.pilot.blast_radius import check_pilot_flags
from pytest_ledger_rollout.checks.pilot.candidates import candidates_report, check_pilot_tenants
from pytest_ledger_rollout.checks.tenant_decision import decide_ops02, tenant_flips
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.phases.opened_target import OpenedTarget
from pytest_ledger_rollout.plugin.fixtures import StepRecorder
from pytest_ledger_rollout.results import CheckResult


@pytest.mark.dod("3.0")
def test_stg_roll_signed_off(predecessor_signoff: CheckResult, recorder: StepRecorder) -> None:
    """STG-ROLL passed for this migration head and release (its sign-off verified)"""
    recorder.check(predecessor_signoff)


@pytest.mark.dod("3.1")
def test_pilot_tenants_are_few_and_low_risk(
    db: Connection, rollout_config: RolloutConfig, pilot_candidates: int, recorder: StepRecorder
) -> None:
    """1 to 3 pilot tenants, each existing and low-risk by the configured criteria"""
    pilot, ledger, tenants = rollout_config.pilot, rollout_config.ledger, rollout_config.tenants
    ranked = (
        [candidates_report(db, ledger, tenants, pilot.risk, pilot_candidates)]
        if pilot_candidates
        else []
    )
    recorder.check(check_pilot_tenants(db, ledger, tenants, pilot.risk, pilot.tenants), *ranked)


@pytest.mark.dod("3.2")
def test_pilot_backfill_clean(
    db: Connection, rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """Tenant-scoped backfill clean for every pilot tenant"""
    recorder.check(check_no_mismatch(db, rollout_config.ledger, rollout_config.pilot.tenants))


@pytest.mark.dod("3.2")
def test_enforcement_on_for_pilots_only(
    db: Connection,
    flag_relation: FlagRelation,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """Signature and enforce flags on for the pilot tenants, off for every other tenant"""
    flags, tenants = rollout_config.flags, rollout_config.tenants
    keys = (flags.signature_flag, flags.enforce_flag)
    recorder.check(
        check_pilot_flags(db, flag_relation, tenants, keys, rollout_config.pilot.tenants)
    )


@pytest.mark.dod("3.3")
def test_ops02_decision(
    flag_states: list[FlagState],
    rollout_target: OpenedTarget,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """OPS-02: pilot vs control and vs its own pre-flip window (400s, webhook 401s, mismatches)"""
    pilot, flags = rollout_config.pilot, rollout_config.flags
    services = rollout_target.services
    rollback = rollout_config.ga.rollback_flags
    recorder.decide(
        decide_ops02(
            services.prometheus_url,
            pilot.tenants,
            pilot.control_tenants,
            tenant_flips(flag_states, (flags.signature_flag, flags.enforce_flag), pilot.tenants),
            rollout_config.metrics.decision,
            at=services.evaluate_at,
            dry_run=pilot.dry_run,
            rollback=RollbackPlan(default=rollback) if rollback else None,
        )
    )
