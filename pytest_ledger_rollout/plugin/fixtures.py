"""Fixtures the phase suites use. Thin: they hand out what the plugin set up for the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import FlagRelation, FlagSourceError, FlagState, read_flags
from pytest_ledger_rollout.checks.forensics.history import scratch_database
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.checks.tenant_decision import Ops02Outcome
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.phases.chain import check_predecessor
from pytest_ledger_rollout.phases.opened_target import (
    OpenedTarget,
    TargetRefused,
    require_destructive,
)
from pytest_ledger_rollout.plugin.state import (
    ITEM_EVIDENCE,
    ITEM_PLAN,
    ITEM_SUMMARY,
    RUN_STATE,
    RunState,
)
from pytest_ledger_rollout.results import CheckResult, DodFailure, Failure
from pytest_ledger_rollout.targets.postgres import start_ephemeral


def _run_state(request: pytest.FixtureRequest) -> RunState:
    state = request.config.stash.get(RUN_STATE, None)
    if state is None:
        raise pytest.UsageError("ledger-rollout fixtures need a phase: run pytest --phase=PHASE")
    return state


class StepRecorder:
    """Records what a check saw and turns a failed result into a DodFailure."""

    def __init__(self, item: pytest.Item, state: RunState) -> None:
        self._item = item
        self._state = state
        self.scrubber = state.scrubber
        item.stash[ITEM_EVIDENCE] = []

    def decide(self, outcome: Ops02Outcome) -> None:
        """The phase's deciding check (the pilot's 3.3): its decision goes to the run record
        as it is, typed, then its result is checked like any other."""
        plan = self._item.stash.get(ITEM_PLAN, None)
        phase = self._state.phase
        if plan is None or plan.check is None or plan.step.id != phase.decision_step:
            raise RuntimeError(
                f"{self._item.name} may not decide for {phase.name}: only the packaged "
                f"check of its deciding step ({phase.decision_step or 'none'}) does"
            )
        self._state.record.decide(outcome.decision)
        self.check(outcome.result)

    def check(self, *results: CheckResult) -> None:
        if not results:
            raise DodFailure(
                Failure(
                    "The check produced no result",
                    expected="at least one verified result",
                    seen="nothing was checked",
                    remedy="Fix the rollout config so this step has something to verify.",
                )
            )
        for result in results:
            self._item.stash[ITEM_EVIDENCE].extend(result.evidence)
            self._state.record.environment.update(result.facts)
        failures = [r.failure for r in results if r.failure is not None]
        self._item.stash[ITEM_SUMMARY] = "; ".join(
            (r.failure.title if r.failure else r.summary) for r in results
        )
        if len(failures) == 1:
            raise DodFailure(failures[0])
        if failures:
            raise DodFailure(
                Failure(
                    f"{len(failures)} checks failed: " + "; ".join(f.title for f in failures),
                    expected="\n".join(f.expected for f in failures),
                    seen="\n".join(f.seen for f in failures),
                    remedy="\n".join(f.remedy for f in failures),
                )
            )


@pytest.fixture
def recorder(request: pytest.FixtureRequest) -> StepRecorder:
    return StepRecorder(request.node, _run_state(request))


@pytest.fixture(scope="session")
def rollout_config(request: pytest.FixtureRequest) -> RolloutConfig:
    return _run_state(request).config


@pytest.fixture(scope="session")
def rollout_target(request: pytest.FixtureRequest) -> OpenedTarget:
    session = _run_state(request).session
    if session is None:
        raise pytest.UsageError("the target was not brought up for this run")
    return session


@pytest.fixture(scope="session")
def rollout_scrubber(request: pytest.FixtureRequest) -> Scrubber:
    """The run's secret scrubber (register a secret before it can reach any output)."""
    return _run_state(request).scrubber


@pytest.fixture(scope="session")
def alembic_project(rollout_config: RolloutConfig) -> AlembicProject:
    return AlembicProject.of(rollout_config.migrations)


@pytest.fixture
def db(rollout_target: OpenedTarget) -> Iterator[Connection]:
    """A fresh connection with the target's session settings, for reading."""
    with rollout_target.engine.connect() as connection:
        yield connection


@pytest.fixture(scope="session")
def migration_connection(rollout_target: OpenedTarget) -> Iterator[Connection]:
    """The connection destructive steps run on (the run holds the phase lock meanwhile)."""
    try:
        require_destructive(rollout_target.target.kind)
    except TargetRefused as refused:
        assert refused.result.failure is not None
        raise DodFailure(refused.result.failure) from None
    with rollout_target.engine.connect() as connection:
        yield connection


@contextmanager
def _flag_source(config: RolloutConfig) -> Iterator[None]:
    """An unreadable flag source fails the step, saying which source."""
    try:
        yield
    except FlagSourceError as exc:
        raise DodFailure(
            Failure(
                "The flag source could not be read",
                expected=f"flag states from the {config.flags.source.kind} source",
                seen=str(exc),
                remedy="Check [flags] in the rollout config and that the source is reachable.",
            )
        ) from None


@pytest.fixture
def flag_states(rollout_config: RolloutConfig, db: Connection) -> list[FlagState]:
    """The flags as the configured source reports them now; an unreadable source fails."""
    with _flag_source(rollout_config):
        return read_flags(rollout_config.flags.source, db)


@pytest.fixture
def flag_relation(rollout_config: RolloutConfig, db: Connection) -> FlagRelation:
    """The configured flags as one SQL relation, for the set-based PRD checks."""
    with _flag_source(rollout_config):
        return FlagRelation.of(rollout_config.flags.source, db)


@pytest.fixture
def predecessor_signoff(request: pytest.FixtureRequest) -> CheckResult:
    """The phase chain: the predecessor's sign-off, verified (not trusted) for this run."""
    state = _run_state(request)
    return check_predecessor(
        state.phase.name,
        signoff_dir=state.paths.json.parent,
        head=state.record.head,
        release=state.record.release,
        rehearsal=state.record.rehearsal,
        identity=state.session.identity.as_json() if state.session else None,
        path=state.predecessor,
        allowed_signers=state.config.signoff.allowed_signers,
    )


@pytest.fixture(scope="session")
def scratch_connection(
    request: pytest.FixtureRequest, rollout_target: OpenedTarget, rollout_config: RolloutConfig
) -> Iterator[Connection]:
    """A throwaway database for rehearsing destructive steps: on the ephemeral target's own
    server, else on a throwaway server of its own; never on the target's server."""
    with ExitStack() as stack:
        if rollout_target.ephemeral is not None:
            server_url = rollout_target.ephemeral.url
        else:
            server = stack.enter_context(start_ephemeral(rollout_config.walk_settings()))
            _run_state(request).scrubber.register(server.password)
            server_url = server.url
        yield stack.enter_context(scratch_database(server_url))


@pytest.fixture
def pilot_candidates(request: pytest.FixtureRequest) -> int:
    """How many ranked pilot candidates the run lists (--pilot-candidates; 0: none)."""
    return _run_state(request).pilot_candidates
