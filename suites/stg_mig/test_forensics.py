"""STG-MIG migration forensics: whether the history replays on a fresh database (1.2), the
pre-flights of step 1.2's upgrade (which revision the schema really matches and the remedy, and
what the pending upgrade will do), drift at head (1.3) and the downgrades the smoke needs (1.4's
pre-flight). Their roles and order come from the step model
(``pytest_ledger_rollout.phases.model``).

Read-only on the target: catalog queries, set-based SQL, and for a history that cannot be
replayed a schema-only pg_dump of it (in a read-only session)."""

from dataclasses import replace

import pytest
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.fingerprint import fingerprint
from pytest_ledger_rollout.checks.forensics.history import (
    CopyRehearsal,
    History,
    NotReplayable,
    rehearse_on_copy,
)
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
from pytest_ledger_rollout.checks.forensics.snapshot import StaleSnapshot, history_for_run
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.phases.opened_target import OpenedTarget
from pytest_ledger_rollout.plugin.fixtures import StepRecorder
from pytest_ledger_rollout.results import DodFailure, Evidence, Failure, failed, passed
from pytest_ledger_rollout.targets.postgres import EphemeralUnavailable


@pytest.fixture(scope="session")
def replay(
    alembic_project: AlembicProject, rollout_config: RolloutConfig, rollout_target: OpenedTarget
) -> History | NotReplayable:
    """Every revision's fingerprint (the snapshot, else one walk on a throwaway database), or
    why the history cannot be replayed on a fresh database."""
    own = rollout_target.ephemeral.url if rollout_target.ephemeral else None
    try:
        return history_for_run(
            alembic_project, rollout_config.forensics, rollout_config.walk_settings(), own
        )
    except NotReplayable as exc:
        return exc
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


def _on_a_copy(replay: History | NotReplayable, project: AlembicProject) -> bool:
    """The history cannot be replayed and declares no base schema: the pending revisions are
    rehearsed on a copy of the target's schema instead. (A declared base schema that does not
    replay is the project's own error: it fails as it is.)"""
    if isinstance(replay, History):
        return False
    if project.base_schema is not None:
        raise replay
    return True


@pytest.fixture(scope="session")
def target_copy(
    rollout_scrubber: Scrubber,
    alembic_project: AlembicProject,
    pending: PendingUpgrade,
    rollout_config: RolloutConfig,
    rollout_target: OpenedTarget,
) -> CopyRehearsal:
    """The pending revisions applied to a schema-only copy of the target (read-only on it)."""
    with rollout_target.engine.connect() as connection:
        before = fingerprint(connection)  # read before step 1.2 upgrades the target
    return rehearse_on_copy(
        alembic_project,
        rollout_target.url,
        pending.current,
        before,
        rollout_config.walk_settings(),
        rollout_config.session.lock_timeout_ms,
        rollout_scrubber.register,
    )


@pytest.fixture(scope="session")
def history(
    request: pytest.FixtureRequest,
    replay: History | NotReplayable,
    alembic_project: AlembicProject,
    pending: PendingUpgrade,
) -> History:
    """The fingerprints the forensics compare with: the walk's, else what the pending
    revisions left on the copy of the target's schema (from the claimed revision to head)."""
    if not _on_a_copy(replay, alembic_project):
        assert isinstance(replay, History)
        return replay
    if not pending.revisions:
        raise DodFailure(
            Failure(
                "No fingerprint to compare with: the history cannot be replayed (step 1.2)",
                expected="the head's fingerprint, from a replay of the history or from the "
                "pending revisions applied to a copy of the target",
                seen="the history fails on a fresh database, and nothing was pending",
                remedy="Declare [migrations] base_schema (see step 1.2's failure), then rerun.",
            )
        )
    copy: CopyRehearsal = request.getfixturevalue("target_copy")
    if copy.history is None:
        assert copy.result.failure is not None
        raise DodFailure(copy.result.failure)
    return copy.history


@pytest.mark.dod("1.2")
def test_history_replays_on_a_fresh_database(
    replay: History | NotReplayable,
    alembic_project: AlembicProject,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """The history replays on a fresh database (from empty, or the declared base schema)"""
    if isinstance(replay, NotReplayable):
        recorder.check(failed(replay.failure))
        return
    base = alembic_project.base_schema
    start = f"the base schema {base}" if base else "an empty database"
    snapshot = rollout_config.forensics.snapshot
    source = (
        f"the snapshot {snapshot.name}"
        if snapshot is not None and snapshot.exists()
        else "a walk on a throwaway database"
    )
    recorder.check(
        passed(
            f"{len(replay.order)} revision(s) replay from {start} ({source})",
            Evidence(
                "history replay",
                f"from {start}: {len(replay.fingerprints)} revision(s) fingerprinted, "
                f"{len(replay.downgrades)} downgrade(s) replayed ({source}, scripts sha256 "
                f"{replay.scripts_sha256[:12]})",
            ),
        )
    )


@pytest.mark.dod("1.2")
def test_schema_matches_claimed_revision(
    request: pytest.FixtureRequest,
    db: Connection,
    alembic_project: AlembicProject,
    replay: History | NotReplayable,
    pending: PendingUpgrade,
    rollout_config: RolloutConfig,
    rollout_target: OpenedTarget,
    recorder: StepRecorder,
) -> None:
    """The schema is the one `alembic current` claims (else: which revision it matches)"""
    if not pending.revisions:
        # It guards the upgrade, and nothing is pending: at head, 1.3 judges the schema.
        recorder.check(passed("nothing pending: at head, step 1.3 checks the schema for drift"))
        return
    if _on_a_copy(replay, alembic_project):
        # No fingerprints to compare with: the pending revisions must apply cleanly to a copy
        # of the target's schema before they may run on the target.
        copy: CopyRehearsal = request.getfixturevalue("target_copy")
        recorder.check(copy.result)
        return
    assert isinstance(replay, History)
    state = read_state(
        replay,
        fingerprint(db),
        alembic_project.current(db),
        rollout_config.forensics.ignore_tables,
    )
    recorder.check(check_schema_state(state, rollout_target.target.kind))


@pytest.fixture(scope="session")
def pending(alembic_project: AlembicProject, rollout_target: OpenedTarget) -> PendingUpgrade:
    """The pending upgrade as it stood before step 1.2 upgraded the target."""
    with rollout_target.engine.connect() as connection:
        return read_pending(alembic_project, connection)


@pytest.mark.dod("1.2")
def test_preflight_pending_ids_fit_version_table(
    db: Connection, pending: PendingUpgrade, recorder: StepRecorder
) -> None:
    """Pre-flight: every pending revision id fits alembic_version.version_num"""
    recorder.check(check_version_width(db, pending))


@pytest.mark.dod("1.2")
def test_preflight_unique_holds_on_todays_rows(
    db: Connection, pending: PendingUpgrade, rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """Pre-flight: no duplicate groups would break the configured UNIQUE constraints"""
    limit = rollout_config.forensics.duplicate_groups_shown
    recorder.check(
        *(check_unique_preflight(db, spec, limit, pending) for spec in rollout_config.unique)
    )


@pytest.mark.dod("1.2")
def test_preflight_no_long_locks_on_large_tables(
    db: Connection, pending: PendingUpgrade, rollout_config: RolloutConfig, recorder: StepRecorder
) -> None:
    """Pre-flight: no pending statement holds a long lock on a large table (squawk + catalog)"""
    recorder.check(check_lock_hazards(db, pending, rollout_config.forensics))


@pytest.mark.dod("1.4")
def test_upgraded_revisions_have_downgrades(
    alembic_project: AlembicProject, pending: PendingUpgrade, recorder: StepRecorder
) -> None:
    """Before the smoke: the upgraded revisions and head have a downgrade"""
    revisions = tuple(dict.fromkeys((*pending.revisions, *alembic_project.heads())))
    recorder.check(check_downgrades(alembic_project, revisions))


@pytest.mark.dod("1.4")
def test_upgraded_revisions_downgrade_to_their_parents(
    alembic_project: AlembicProject,
    history: History,
    pending: PendingUpgrade,
    recorder: StepRecorder,
) -> None:
    """Before the smoke: each upgraded revision's downgrade restores its parent's schema"""
    revisions = tuple(dict.fromkeys((*pending.revisions, *alembic_project.heads())))
    recorder.check(check_downgrades_proven(history, revisions))


@pytest.mark.dod("1.3")
def test_no_drift_at_head(
    db: Connection,
    replay: History | NotReplayable,
    alembic_project: AlembicProject,
    history: History,
    rollout_config: RolloutConfig,
    recorder: StepRecorder,
) -> None:
    """At head, the schema is exactly the head fingerprint (no change made by hand)"""
    result = check_drift_at_head(
        history,
        fingerprint(db),
        alembic_project.current(db),
        rollout_config.forensics.ignore_tables,
    )
    if result.ok and isinstance(replay, NotReplayable):
        result = replace(
            result,
            summary=f"{result.summary}, as the pending revisions left it on a copy of the "
            "target taken before the upgrade (older drift is not visible without a replayable "
            "history: step 1.2)",
        )
    recorder.check(result)
