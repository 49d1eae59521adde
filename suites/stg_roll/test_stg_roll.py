"""STG-ROLL (runbook Phase 2): turn the flags on in order on staging, backfill, watch webhook
401s, and prove the withdrawals flow with enforcement on."""

import pytest
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.app_hosts import check_backfill_dry_run, check_external_command
from pytest_ledger_rollout.checks.flags import (
    FlagState,
    check_flip_order,
    check_on_everywhere,
    flip_time,
)
from pytest_ledger_rollout.checks.ledger import (
    check_enforce_after_backfill,
    check_no_mismatch,
    last_backfill_write,
)
from pytest_ledger_rollout.checks.metrics.webhook_watch import webhook_401_watch_from
from pytest_ledger_rollout.checks.smoke import run_withdrawals_smoke
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.phases.opened_target import OpenedTarget
from pytest_ledger_rollout.plugin.fixtures import StepRecorder
from pytest_ledger_rollout.results import CheckResult


@pytest.mark.dod("2.0")
def test_stg_mig_signed_off(predecessor_signoff: CheckResult, recorder: StepRecorder) -> None:
    """STG-MIG passed for this migration head and release (its sign-off verified)"""
    recorder.check(predecessor_signoff)


@pytest.mark.dod("2.1")
def test_shadow_write_and_mismatch_log_on(
    flag_states: list[FlagState], rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """ledger_shadow_write and ledger_balance_mismatch_log are on"""
    recorder.check(check_on_everywhere(flag_states, rollout_config.flags.steps["2.1"]))


@pytest.mark.dod("2.2")
def test_backfill_left_no_mismatch(
    db: Connection, rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """Every wallet's legacy balance equals its ledger sum"""
    recorder.check(check_no_mismatch(db, rollout_config.ledger))


@pytest.mark.dod("2.2")
def test_backfill_dry_run_has_nothing_left(
    rollout_target: OpenedTarget, rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """The backfill's dry run has nothing left to change"""
    target = rollout_target.target.config
    if not (target.app_host and target.app_dir):
        pytest.skip(f"target {target.name} declares no app_host/app_dir to run the dry run on")
    recorder.check(
        check_backfill_dry_run(
            target.app_host,
            target.app_dir,
            rollout_config.backfill.dry_run_command,
            rollout_config.backfill.nothing_to_change,
            target.database_url_env,
            recorder.scrubber,
        )
    )


@pytest.mark.dod("2.3")
def test_signature_enforcement_on(
    flag_states: list[FlagState], rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """webhook_signature_enforced is on"""
    recorder.check(check_on_everywhere(flag_states, rollout_config.flags.steps["2.3"]))


@pytest.mark.dod("2.4")
def test_enforce_balance_on(
    flag_states: list[FlagState], rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """ledger_enforce_balance is on"""
    recorder.check(check_on_everywhere(flag_states, rollout_config.flags.steps["2.4"]))


@pytest.mark.dod("2.4")
def test_flags_flipped_in_runbook_order_after_the_backfill(
    flag_states: list[FlagState],
    db: Connection,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """Flags flipped in runbook order; enforcement only after the backfill"""
    enforce = rollout_config.flags.enforce_flag
    recorder.check(
        check_flip_order(flag_states, rollout_config.flags.order),
        check_enforce_after_backfill(
            enforce, flip_time(flag_states, enforce), last_backfill_write(db, rollout_config.ledger)
        ),
    )


@pytest.mark.dod("2.3")
def test_no_webhook_401_surge_after_the_flip(
    flag_states: list[FlagState],
    rollout_target: OpenedTarget,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """No rise of 401 WEBHOOK_SIGNATURE_INVALID after the signature flip (Prometheus)"""
    signature = rollout_config.flags.signature_flag
    recorder.check(
        webhook_401_watch_from(
            rollout_target.services.prometheus_url,
            flip_time(flag_states, signature),
            rollout_target.services.watch or rollout_config.metrics.webhook_401,
        )
    )


@pytest.mark.dod("2.4")
def test_withdrawals_smoke_with_enforcement_on(
    rollout_target: OpenedTarget,
    rollout_config: RolloutConfig,
    db: Connection,
    recorder: StepRecorder,
) -> None:
    """Deposit / withdraw / approve / mark-paid with enforcement on (the built-in smoke)"""
    services = rollout_target.services
    recorder.check(
        run_withdrawals_smoke(
            services.service_url,
            services.webhook_secret,
            rollout_config.smoke,
            db,
            rollout_config.ledger,
        )
    )


@pytest.mark.dod("2.4")
def test_team_e2e_withdrawals_spec(
    rollout_target: OpenedTarget, rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """The team's own e2e withdrawals spec (optional external step)"""
    smoke = rollout_config.smoke
    if not smoke.external_command:
        pytest.skip("no [smoke] external_command configured")
    recorder.check(
        check_external_command(
            rollout_target.target.config.app_host or "local://",
            smoke.external_dir or rollout_target.target.config.app_dir or ".",
            smoke.external_command,
            rollout_target.target.config.database_url_env,
            recorder.scrubber,
        )
    )
