"""PRD-GA (runbook Phase 4): widen tenant by tenant, every enabled tenant clean, the rollback
procedure ready, enforcement in general use. Read-only on production."""

import pytest
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import FlagRelation, FlagState
from pytest_ledger_rollout.checks.ga.general_use import check_general_use
from pytest_ledger_rollout.checks.ga.rollback import check_rollback_plan
from pytest_ledger_rollout.checks.ga.waves import (
    check_enforce_after_tenant_backfill,
    check_enforce_with_signature,
    check_enforced_backfill,
    check_waves,
)
from pytest_ledger_rollout.checks.metrics.decision import RollbackPlan
from pytest_ledger_rollout.checks.migrations import AlembicProject, check_release_downgrades
from pytest_ledger_rollout.checks.tenant_decision import decide_ops02, tenant_flips
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.phases.opened_target import OpenedTarget
from pytest_ledger_rollout.plugin.fixtures import StepRecorder
from pytest_ledger_rollout.results import CheckResult


@pytest.mark.dod("4.0")
def test_pilot_decided_go(predecessor_signoff: CheckResult, recorder: StepRecorder) -> None:
    """PRD-PILOT decided GO for this migration head and release (its sign-off verified)"""
    recorder.check(predecessor_signoff)


@pytest.mark.dod("4.1")
def test_enforced_tenants_are_the_declared_waves(
    db: Connection,
    flag_relation: FlagRelation,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """The tenants with enforcement on are exactly the waves declared so far"""
    enforce, tenants = rollout_config.flags.enforce_flag, rollout_config.tenants
    recorder.check(check_waves(db, flag_relation, tenants, enforce, rollout_config.ga.waves))


@pytest.mark.dod("4.1")
def test_every_enabled_tenant_is_clean(
    db: Connection,
    flag_relation: FlagRelation,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """Every enabled tenant: backfill clean, signature enforced too, enforced after its backfill"""
    flags, ledger, tenants = rollout_config.flags, rollout_config.ledger, rollout_config.tenants
    enforce, rows = flags.enforce_flag, flag_relation
    recorder.check(
        check_enforced_backfill(db, ledger, rows, tenants, enforce),
        check_enforce_with_signature(db, rows, tenants, enforce, flags.signature_flag),
        check_enforce_after_tenant_backfill(db, ledger, rows, tenants, enforce),
    )


@pytest.mark.dod("4.2")
def test_rollback_plan_ready(
    db: Connection,
    flag_relation: FlagRelation,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """Every flag of the rollback plan exists as each enabled tenant's own row"""
    ga = rollout_config.ga
    flags = ga.rollback_flags or RollbackPlan().default
    plan = {tenant: flags for wave in ga.waves for tenant in wave}
    recorder.check(check_rollback_plan(db, flag_relation, rollout_config.tenants, plan))


@pytest.mark.dod("4.2")
def test_release_downgrades_rehearsed(
    scratch_connection: Connection,
    alembic_project: AlembicProject,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """Every revision of this release downgrades (rehearsed on a throwaway database)"""
    chain, baseline = rollout_config.migrations.expected_chain, rollout_config.migrations.baseline
    release = chain[chain.index(baseline) + 1 :]
    recorder.check(check_release_downgrades(alembic_project, scratch_connection, release))


@pytest.mark.dod("4.3")
def test_enforcement_in_general_use(
    db: Connection,
    flag_relation: FlagRelation,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """Enforcement on for all tenants (or the configured share)"""
    ga, tenants = rollout_config.ga, rollout_config.tenants
    enforce = rollout_config.flags.enforce_flag
    recorder.check(check_general_use(db, flag_relation, tenants, enforce, ga.min_share))


@pytest.mark.dod("4.3")
def test_signals_clean_for_the_latest_wave(
    flag_states: list[FlagState],
    rollout_target: OpenedTarget,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """OPS-02 signals clean: the latest wave against the tenants enabled before it"""
    waves, flags = rollout_config.ga.waves, rollout_config.flags
    latest = waves[-1] if waves else ()
    earlier = tuple(tenant for wave in waves[:-1] for tenant in wave)
    services = rollout_target.services
    signals = decide_ops02(
        services.prometheus_url,
        latest,
        earlier,
        tenant_flips(flag_states, (flags.signature_flag, flags.enforce_flag), latest),
        rollout_config.metrics.decision,
        at=services.evaluate_at,
    )
    recorder.check(signals.result)  # GA widens on clean signals; it decides no GO of its own
