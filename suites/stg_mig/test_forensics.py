"""STG-MIG migration forensics: the pre-flights of step 1.2's upgrade (which revision the schema
really matches and the remedy, and what the pending upgrade will do), drift at head (1.3) and
the downgrades the smoke needs (1.4's pre-flight). Their roles and order come from the step
model in ``pytest_ledger_rollout.phases.model``.

Read-only on the target: catalog queries and set-based SQL only."""

import pytest
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.fingerprint import fingerprint
from pytest_ledger_rollout.checks.forensics.history import History
from pytest_ledger_rollout.checks.forensics.preflight import (
    PendingUpgrade,
    check_downgrades,
    check_downgrades_proven,
    check_lock_hazards,
    check_unique_preflight,
    check_version_width,
    read_pending,
)
from pytest_ledger_rollout.checks.forensics.remedy import (
    check_drift_at_head,
    check_schema_state,
    read_state,
)
from pytest_ledger_rollout.checks.forensics.snapshot import (
    StaleSnapshot,
    history_for_run,
)
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.phases.target_session import TargetSession
from pytest_ledger_rollout.plugin.fixtures import StepRecorder
from pytest_ledger_rollout.results import DodFailure, Failure, passed
from pytest_ledger_rollout.targets.postgres import EphemeralUnavailable


@pytest.fixture(scope="session")
def history(
    alembic_project: AlembicProject, rollout_config: RolloutConfig, rollout_target: TargetSession
) -> History:
    """Every revision's fingerprint: the snapshot, else one walk on a throwaway database."""
    own = rollout_target.ephemeral.url if rollout_target.ephemeral else None
    try:
        return history_for_run(
            alembic_project, rollout_config.forensics, rollout_config.walk_settings(), own
        )
    except EphemeralUnavailable as exc:
        raise DodFailure(
            Failure(
                "No fingerprints of the migration history: no throwaway Postgres could start",
                expected="a walk of the history on a throwaway Postgres, or a snapshot",
                seen=str(exc),
                remedy="Take a snapshot where Postgres runs (`python -m pytest_ledger_rollout "
                "snapshot`) and set [forensics] snapshot.",
            )
        ) from None
    except StaleSnapshot as stale:
        raise DodFailure(
            Failure(
                "The fingerprint snapshot is stale: it was not taken from these migrations",
                expected="a snapshot whose scripts hash equals this history's",
                seen=str(stale),
                remedy="Regenerate it, or remove [forensics] snapshot to walk on a throwaway "
                "Postgres.",
            )
        ) from None


@pytest.mark.dod("1.2")
def test_schema_matches_claimed_revision(
    db: Connection,
    alembic_project: AlembicProject,
    history: History,
    pending: PendingUpgrade,
    rollout_config: RolloutConfig,
    rollout_target: TargetSession,
    evidence: StepRecorder,
) -> None:
    """The schema is the one `alembic current` claims (else: which revision it matches)"""
    if not pending.revisions:
        # It guards the upgrade, and nothing is pending: at head, 1.3 judges the schema.
        evidence.check(passed("nothing pending: at head, step 1.3 checks the schema for drift"))
        return
    state = read_state(
        history,
        fingerprint(db),
        alembic_project.current(db),
        rollout_config.forensics.ignore_tables,
    )
    evidence.check(check_schema_state(state, rollout_target.target.kind))


@pytest.fixture(scope="session")
def pending(alembic_project: AlembicProject, rollout_target: TargetSession) -> PendingUpgrade:
    """The pending upgrade as it stood before step 1.2 upgraded the target."""
    with rollout_target.engine.connect() as connection:
        return read_pending(alembic_project, connection)


@pytest.mark.dod("1.2")
def test_preflight_pending_ids_fit_version_table(
    db: Connection, pending: PendingUpgrade, evidence: StepRecorder
) -> None:
    """Pre-flight: every pending revision id fits alembic_version.version_num"""
    evidence.check(check_version_width(db, pending))


@pytest.mark.dod("1.2")
def test_preflight_unique_holds_on_todays_rows(
    db: Connection, pending: PendingUpgrade, rollout_config: RolloutConfig, evidence: StepRecorder
) -> None:
    """Pre-flight: no duplicate groups would break the configured UNIQUE constraints"""
    limit = rollout_config.forensics.duplicate_groups_shown
    evidence.check(
        *(check_unique_preflight(db, spec, limit, pending) for spec in rollout_config.unique)
    )


@pytest.mark.dod("1.2")
def test_preflight_no_long_locks_on_large_tables(
    db: Connection, pending: PendingUpgrade, rollout_config: RolloutConfig, evidence: StepRecorder
) -> None:
    """Pre-flight: no pending statement holds a long lock on a large table (squawk + catalog)"""
    evidence.check(check_lock_hazards(db, pending, rollout_config.forensics))


@pytest.mark.dod("1.4")
def test_upgraded_revisions_have_downgrades(
    alembic_project: AlembicProject, pending: PendingUpgrade, evidence: StepRecorder
) -> None:
    """Before the smoke: the upgraded revisions and head have a downgrade"""
    revisions = tuple(dict.fromkeys((*pending.revisions, *alembic_project.heads())))
    evidence.check(check_downgrades(alembic_project, revisions))


@pytest.mark.dod("1.4")
def test_upgraded_revisions_downgrade_to_their_parents(
    alembic_project: AlembicProject,
    history: History,
    pending: PendingUpgrade,
    evidence: StepRecorder,
) -> None:
    """Before the smoke: each upgraded revision's downgrade restores its parent's schema"""
    revisions = tuple(dict.fromkeys((*pending.revisions, *alembic_project.heads())))
    evidence.check(check_downgrades_proven(history, revisions))


@pytest.mark.dod("1.3")
def test_no_drift_at_head(
    db: Connection,
    alembic_project: AlembicProject,
    history: History,
    rollout_config: RolloutConfig,
    evidence: StepRecorder,
) -> None:
    """At head, the schema is exactly the head fingerprint (no change made by hand)"""
    evidence.check(
        check_drift_at_head(
            history,
            fingerprint(db),
            alembic_project.current(db),
            rollout_config.forensics.ignore_tables,
        )
    )
