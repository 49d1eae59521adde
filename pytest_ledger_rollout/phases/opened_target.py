"""Bringing a target up for a run: start or connect, hold the phase lock where the phase writes,
prove identity, prepare. Everything is undone through one ExitStack."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from pytest_ledger_rollout.checks.flags import SQL
from pytest_ledger_rollout.checks.metrics.webhook_watch import WebhookWatchThresholds
from pytest_ledger_rollout.checks.migrations import (
    AlembicProject,
    EnvPyError,
    MigrationError,
    env_py_failure,
    not_replayable,
)
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.masking import Scrubber, mask_url
from pytest_ledger_rollout.phases.model import Phase
from pytest_ledger_rollout.results import CheckResult, DodFailure, Failure
from pytest_ledger_rollout.targets.connection import (
    ReadOnlyViolation,
    check_role_privileges,
    connection_failure,
    open_engine,
)
from pytest_ledger_rollout.targets.declared import (
    ResolvedTarget,
    TargetError,
    database_url,
    url_overrides,
)
from pytest_ledger_rollout.targets.identity import ServerIdentity, prove_identity, read_identity
from pytest_ledger_rollout.targets.kinds import DESTRUCTIVE_KINDS, EPHEMERAL, PRODUCTION
from pytest_ledger_rollout.targets.postgres import (
    EarlyServer,
    EphemeralServer,
    EphemeralSettings,
    start_ephemeral,
)

# One advisory lock key per database for every run of a phase that writes (positive, so it
# reads back unchanged from pg_locks' classid/objid halves).
PHASE_LOCK_KEY = (
    int.from_bytes(hashlib.sha256(b"pytest-ledger-rollout:migrations").digest()[:8], "big")
    & 0x7FFF_FFFF_FFFF_FFFF
)


LOCK_NOT_AVAILABLE = "55P03"  # the wait for the lock ran into its lock_timeout


class TargetRefused(RuntimeError):
    """The target failed a safety precondition; the run stops without touching it."""

    def __init__(self, result: CheckResult) -> None:
        assert result.failure is not None
        self.result = result
        super().__init__(str(DodFailure(result.failure)))  # Expected / Seen / What to do


@dataclass
class ServiceEndpoints:
    """The running service around the database (from the config, or set up by a rehearsal)."""

    service_url: str | None = None
    prometheus_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    # A rehearsal's own 401 watch windows (seconds, not the config's staging half-hours).
    watch: WebhookWatchThresholds | None = None
    # A rehearsal's pinned evaluation time (its Prometheus holds a history, not live data).
    evaluate_at: datetime | None = None


@dataclass
class OpenedTarget:
    target: ResolvedTarget
    url: str = field(repr=False)  # holds the password: never in a repr or --showlocals
    engine: Engine
    identity: ServerIdentity
    identity_result: CheckResult
    ephemeral: EphemeralServer | None
    services: ServiceEndpoints = field(default_factory=ServiceEndpoints)
    # The connection holding the phase lock, for phases that write (None for read-only ones).
    lock: Connection | None = None

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def lock_held(self) -> bool:
        """Whether this run still holds the phase lock (its connection may have been lost)."""
        if self.lock is None:
            return False
        try:
            held = self.lock.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid()"
                    " AND ((classid::bigint << 32) | objid::bigint) = :key"
                ),
                {"key": PHASE_LOCK_KEY},
            ).scalar_one()
            self.lock.rollback()
        except DBAPIError:
            return False
        return bool(held)


def start_in_background(
    config: RolloutConfig,
    target: ResolvedTarget,
    phase: Phase,
    stack: ExitStack,
    early: EarlyServer | None = None,
) -> Future[EphemeralServer]:
    """Start the throwaway server (or take the one ``early`` is starting, when it was started
    with this target's settings) and migrate it while pytest collects.

    Whatever happens to the run, the server is stopped when the stack closes."""
    settings = target.config.ephemeral
    assert settings is not None
    if early is not None:
        stack.callback(early.stop)  # also when it is not this target's (then stopped at once)
        if early.settings != settings:
            early.stop()
            early = None
    revision = config.migrations.baseline if phase.ephemeral_at_baseline else "head"
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-rollout-pg")
    future = executor.submit(_start_at_revision, config, settings, phase.name, revision, early)
    executor.shutdown(wait=False)
    stack.callback(_stop_once_started, future)
    return future


def _start_at_revision(
    config: RolloutConfig,
    settings: EphemeralSettings,
    phase: str,
    revision: str,
    early: EarlyServer | None = None,
) -> EphemeralServer:
    # The project and its revision scripts import their application (a script_location in a
    # package imports it; MLflow's take ~0.8 s): load them while Postgres starts, which waits
    # on initdb and pg_ctl, not on Python.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-rollout-load") as pool:
        loaded = pool.submit(_loaded_project, config)
        server = early.future.result() if early is not None else start_ephemeral(settings)
        try:
            project = loaded.result()
        except BaseException:
            server.stop()
            raise
    try:
        engine = open_engine(server.url, EPHEMERAL, phase, config.session)
        try:
            with engine.connect() as connection:
                project.create_base_schema(connection)
                project.upgrade(connection, revision)
        except (MigrationError, EnvPyError) as exc:
            failure = (
                not_replayable(project, exc)
                if isinstance(exc, MigrationError)
                else env_py_failure(exc)
            )
            raise TargetRefused(CheckResult(summary=failure.title, failure=failure)) from None
        finally:
            engine.dispose()
    except BaseException:
        server.stop()
        raise
    return server


def _loaded_project(config: RolloutConfig) -> AlembicProject:
    project = AlembicProject.of(config.migrations)
    project.revisions()
    return project


def _stop_once_started(future: Future[EphemeralServer]) -> None:
    try:
        server = future.result()
    except BaseException:  # it never started; the run already reported why
        return
    server.stop()


def open_target(
    config: RolloutConfig,
    target: ResolvedTarget,
    phase: Phase,
    scrubber: Scrubber,
    stack: ExitStack,
    ephemeral_start: Future[EphemeralServer] | None = None,
) -> OpenedTarget:
    """Connect, take the phase lock where the phase writes, prove identity, and check the
    kind's safety settings, before any check runs. A failure raises TargetRefused."""
    ephemeral = None
    server_addr: tuple[str, ...] = ()
    system_identifier: str | None = None
    if target.kind == EPHEMERAL:
        if ephemeral_start is None:
            ephemeral_start = start_in_background(config, target, phase, stack)
        ephemeral = ephemeral_start.result()
        scrubber.register(ephemeral.password)
        url = ephemeral.url
        expected_host, expected_db = ephemeral.host, ephemeral.database
        # A container's server reports its own network address, not the published 127.0.0.1.
        server_addr = ephemeral.server_addresses
    else:
        assert target.url is not None
        url = target.url.render_as_string(hide_password=False)
        expect = target.config.expect
        assert expect.host is not None and expect.database is not None
        expected_host, expected_db = expect.host, expect.database
        server_addr, system_identifier = expect.server_addr, expect.system_identifier
    scrubber.register_url(url)
    overridden = url_overrides(url, os.environ)
    if overridden is not None:
        raise TargetRefused(overridden)
    session_kind = phase.session_kind(target.kind)
    engine = open_engine(url, session_kind, phase.name, config.session)
    stack.callback(engine.dispose)
    try:
        lock = (
            stack.enter_context(phase_lock(engine, config.session.phase_lock_wait_ms))
            if phase.writes
            else None
        )
        with engine.connect() as connection:
            identity = read_identity(connection)
            privileges = (
                check_role_privileges(connection, write_guarded_tables(config))
                if session_kind == PRODUCTION
                else None
            )
    except DBAPIError as exc:
        raise TargetRefused(connection_failure(exc, mask_url(url), scrubber)) from None
    except ReadOnlyViolation as exc:
        raise TargetRefused(
            _failed_safety(
                "The production session is not read-only", "a READ ONLY transaction", str(exc)
            )
        ) from None
    result = prove_identity(
        url, expected_host, expected_db, server_addr, identity, system_identifier,
        socket_allowed=target.kind == EPHEMERAL,
    )  # fmt: skip
    if not result.ok:
        raise TargetRefused(result)
    if session_kind == PRODUCTION and not identity.read_only:
        raise TargetRefused(
            _failed_safety(
                "The production session is not read-only",
                "transaction_read_only = on for every session",
                "transaction_read_only = off",
            )
        )
    if privileges is not None:
        # The role's own rights are the guard that holds even against a bug here: reported,
        # and a refusal where the target requires a read-only role.
        if not privileges.ok and target.config.require_read_only_role:
            raise TargetRefused(privileges)
        result = replace(result, evidence=(*result.evidence, *privileges.evidence))
    if ephemeral is not None and target.config.app_host == "local://":
        # The app on this machine reads the throwaway database like the suite does.
        _export(target.config.database_url_env, url, stack)
    secret = os.environ.get(target.config.webhook_secret_env) or None
    scrubber.register(secret)
    services = ServiceEndpoints(target.config.service_url, target.config.prometheus_url, secret)
    return OpenedTarget(target, url, engine, identity, result, ephemeral, services, lock)


def _export(variable: str, value: str, stack: ExitStack) -> None:
    previous = os.environ.get(variable)
    os.environ[variable] = value
    stack.callback(_restore_env, variable, previous)


def _restore_env(variable: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = previous


def _failed_safety(title: str, expected: str, seen: str) -> CheckResult:
    return CheckResult(
        summary=title,
        failure=Failure(
            title, expected, seen, remedy="Check the target's kind and URL in the rollout config."
        ),
    )


@contextmanager
def phase_lock(engine: Engine, wait_ms: int) -> Iterator[Connection]:
    """A connection holding the phase's advisory lock from before the first read of the target
    to after its last check, so two runs against one database serialize."""
    with engine.connect() as connection:
        restore = connection.execute(text("SHOW lock_timeout")).scalar_one()
        connection.execute(
            text("SELECT set_config('lock_timeout', :ms, false)"), {"ms": f"{wait_ms}ms"}
        )
        try:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PHASE_LOCK_KEY})
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            connection.rollback()
            holder = _lock_holder(connection)
            raise TargetRefused(
                CheckResult(
                    summary="another run holds the phase lock",
                    failure=Failure(
                        "Another run holds this database's phase lock: no check was run",
                        expected=f"the lock free within {wait_ms} ms",
                        seen=holder,
                        remedy=(
                            "Wait for that run to finish and rerun. Two runs of a phase that "
                            "writes must never work on the same database at once."
                        ),
                    ),
                )
            ) from None
        connection.execute(text("SELECT set_config('lock_timeout', :v, false)"), {"v": restore})
        connection.commit()
        try:
            yield connection
        finally:
            _unlock(connection)


def _unlock(connection: Connection) -> None:
    # A lost connection released the lock with it; nothing else is left to undo.
    try:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PHASE_LOCK_KEY})
        connection.commit()
    except DBAPIError:
        connection.invalidate()


def require_destructive(kind: str) -> None:
    """Destructive steps (upgrade, downgrade) never run on a production-kind target."""
    if kind not in DESTRUCTIVE_KINDS:
        raise TargetRefused(
            _failed_safety(
                f"Destructive steps never run on a {kind} target",
                "upgrade / downgrade only on ephemeral or staging targets",
                f"a destructive step was requested on a {kind} target",
            )
        )


def _lock_holder(connection: Connection) -> str:
    row = connection.execute(
        text(
            "SELECT a.pid, a.application_name, a.backend_start, a.client_addr"
            " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            "   AND ((l.classid::bigint << 32) | l.objid::bigint) = :key"
        ),
        {"key": PHASE_LOCK_KEY},
    ).first()
    connection.rollback()
    if row is None:
        return "the lock was held, and released before its holder could be read"
    return (
        f"held by pid {row.pid} ({row.application_name or 'no application_name'}, "
        f"client {row.client_addr or 'local socket'}, connected since {row.backend_start})"
    )


def resolve_target(
    config: RolloutConfig, phase: Phase, name: str | None, environ: Mapping[str, str]
) -> ResolvedTarget:
    chosen = name or config.default_target()
    if chosen is None:
        raise TargetError(
            f"no --target given and {config.path} declares no ephemeral target: "
            f"pass --target=NAME (one of {', '.join(config.targets)})"
        )
    target = config.targets.get(chosen)
    if target is None:
        raise TargetError(
            f"unknown target {chosen!r}: use one of {', '.join(config.targets)} "
            f"or declare [targets.{chosen}] in {config.path}"
        )
    if target.kind not in phase.allowed_kinds:
        raise TargetError(
            f"phase {phase.name} may not run against {target.kind} target {chosen!r}: "
            f"it runs on {' or '.join(sorted(phase.allowed_kinds))} targets only"
        )
    if target.kind == EPHEMERAL:
        return ResolvedTarget(target, None)
    if phase.signs_webhooks and not environ.get(target.webhook_secret_env):
        raise TargetError(
            f"phase {phase.name} signs webhooks for target {chosen!r} with the secret in "
            f"${target.webhook_secret_env}, which is unset: export {target.webhook_secret_env} "
            f"(or name another variable in [targets.{chosen}] webhook_secret_env)"
        )
    return ResolvedTarget(target, database_url(target, environ))


def write_guarded_tables(config: RolloutConfig) -> tuple[str, ...]:
    """The tables a production role must not be able to write: the ledger's, and the flags'
    where they live in the database."""
    source = config.flags.source
    flags = (source.table.table,) if source.kind == SQL else ()
    return (config.ledger.wallets, config.ledger.entries, *flags)
