"""STG-MIG (runbook Phase 1): verify the migrations on staging Postgres."""

import pytest
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.app_hosts import check_app_sees_same_database
from pytest_ledger_rollout.checks.forensics.remedy import live_stamp_hint
from pytest_ledger_rollout.checks.migrations import (
    AlembicProject,
    check_current_not_empty,
    check_downgrade_upgrade_smoke,
    check_history_chain,
    check_single_head,
    check_upgrade_head,
)
from pytest_ledger_rollout.checks.schema import check_unique_constraint
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.phases.opened_target import OpenedTarget
from pytest_ledger_rollout.plugin.fixtures import StepRecorder
from pytest_ledger_rollout.results import DodFailure, Failure
from pytest_ledger_rollout.targets.kinds import STAGING


@pytest.mark.dod("1.1")
def test_connected_to_expected_database(
    rollout_target: OpenedTarget, recorder: StepRecorder
) -> None:
    """Connected to the expected database (host and database from URL and server)"""
    recorder.check(rollout_target.identity_result)


@pytest.mark.dod("1.1")
def test_alembic_current_not_empty(
    db: Connection, alembic_project: AlembicProject, recorder: StepRecorder
) -> None:
    """`alembic current` is not empty"""
    recorder.check(check_current_not_empty(alembic_project, db))


@pytest.mark.dod("1.1")
def test_history_has_one_head(alembic_project: AlembicProject, recorder: StepRecorder) -> None:
    """The history has exactly one head"""
    recorder.check(check_single_head(alembic_project))


@pytest.mark.dod("1.1")
def test_history_chain_is_expected(
    alembic_project: AlembicProject, rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """The history chain ending at head is the expected chain"""
    recorder.check(check_history_chain(alembic_project, rollout_config.migrations.expected_chain))


@pytest.mark.dod("1.1")
def test_app_alembic_sees_same_database(
    rollout_target: OpenedTarget,
    db: Connection,
    alembic_project: AlembicProject,
    recorder: StepRecorder,
) -> None:
    """The app's Alembic sees the same database and revision"""
    target = rollout_target.target.config
    if not (target.app_host and target.app_dir):
        if target.kind != STAGING:
            pytest.skip(f"target {target.name} declares no app_host/app_dir")
        # The runbook runs `alembic current` in the pod: on staging its absence is a finding.
        raise DodFailure(
            Failure(
                "The runbook's `alembic current` on the app host was not run",
                expected=f"[targets.{target.name}] app_host and app_dir, where the app runs",
                seen=f"staging target {target.name} declares no app_host/app_dir",
                remedy=(
                    f"Set [targets.{target.name}] app_host (e.g. kubectl://backend-0?"
                    "namespace=staging&container=api) and app_dir (e.g. /app/backend), or "
                    'record the exception as a waiver of step "1.1" (run: true).'
                ),
            )
        )
    recorder.check(
        check_app_sees_same_database(
            target.app_host,
            target.app_dir,
            target.database_url_env,
            db,
            alembic_project.current(db),
            recorder.scrubber,
        )
    )


@pytest.mark.dod("1.2")
def test_upgrade_head(
    migration_connection: Connection, alembic_project: AlembicProject, recorder: StepRecorder
) -> None:
    """`alembic upgrade head` finishes without error and current is head"""
    hint = live_stamp_hint(alembic_project, migration_connection)
    recorder.check(check_upgrade_head(alembic_project, migration_connection, hint))


@pytest.mark.dod("1.3")
def test_table_and_unique_constraint(
    db: Connection, rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """Table exists with the UNIQUE constraint over the configured columns"""
    recorder.check(*(check_unique_constraint(db, spec) for spec in rollout_config.unique))


@pytest.mark.dod("1.4")
def test_downgrade_upgrade_smoke(
    migration_connection: Connection,
    alembic_project: AlembicProject,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """`alembic downgrade -1` then `alembic upgrade head`, both proven on the schema"""
    recorder.check(
        check_downgrade_upgrade_smoke(alembic_project, migration_connection, rollout_config.unique)
    )
