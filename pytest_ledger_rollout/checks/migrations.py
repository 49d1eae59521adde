"""Alembic through its Python API: history, heads, current revision, upgrade and downgrade on a
connection the plugin owns (so session timeouts and the phase lock apply), driven the way
`alembic upgrade` drives it: the connection reaches env.py with no transaction open."""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from pytest_ledger_rollout.checks.fingerprint import Difference, fingerprint
from pytest_ledger_rollout.checks.schema import UniqueSpec, check_unique_constraint
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed


@dataclass(frozen=True)
class Revision:
    id: str
    down: tuple[str, ...]


class AlembicProjectError(Exception):
    """The Alembic project cannot be used at all (a usage problem, not a check's finding)."""


class MigrationError(Exception):
    """A migration step failed: which revision, the statement, the database's error."""

    def __init__(self, revision: str | None, statement: str | None, error: str) -> None:
        self.revision, self.statement, self.error = revision, statement, error
        lines = [f"revision {revision or '(before the first step)'}: {error}"]
        if statement:
            lines.append(f"statement: {statement[:1500]}")
        super().__init__("\n".join(lines))


# env.py failed before handing over a migration context: the script itself is at fault.
class EnvPyError(AlembicProjectError):
    pass


@dataclass(frozen=True)
class Applied:
    """What one `alembic upgrade/downgrade` run did."""

    steps: tuple[str, ...]  # revisions upgraded (or downgraded), in order
    # None when env.py ran the migrations on the handed-in connection; else what it used.
    foreign_connection: str | None = None


# The last project made for a [migrations] section, with that very section object (a config
# loaded anew gets a project of its own; one slot: in-process runs do not pile up projects).
_LAST_LOADED: list[tuple[MigrationsConfig, AlembicProject]] = []


class AlembicProject:
    def __init__(self, alembic_ini: Path, base_schema: str | None = None) -> None:
        self.alembic_ini = alembic_ini
        self.base_schema = base_schema  # "module:function", "file.py:function" or "file.sql"
        try:
            self.script = ScriptDirectory.from_config(self._config())
        except CommandError as exc:
            raise AlembicProjectError(
                script_location_problem(alembic_ini) or f"{alembic_ini}: {exc}"
            ) from None
        self.env_py = Path(self.script.dir) / "env.py"

    @classmethod
    def of(cls, migrations: MigrationsConfig) -> AlembicProject:
        """The project a rollout config's [migrations] names: one per loaded config, so a run
        reads its script directory (and executes its revision files) once."""
        loaded = _LAST_LOADED[0] if _LAST_LOADED else None
        if loaded is not None and loaded[0] is migrations:
            return loaded[1]
        project = cls(migrations.alembic_ini, migrations.base_schema)
        _LAST_LOADED[:] = [(migrations, project)]
        return project

    def _config(self, url: str | None = None, connection: Connection | None = None) -> Config:
        config = Config(str(self.alembic_ini))
        location = config.get_main_option("script_location")
        # `alembic` is run from the ini's folder: a relative location means a folder there.
        if location and ":" not in location and not os.path.isabs(location):
            beside = self.alembic_ini.parent / location
            if not Path(location).is_dir() and beside.is_dir():
                config.set_main_option("script_location", str(beside).replace("%", "%%"))
        if connection is not None:
            config.attributes["connection"] = connection
        if url is not None:
            # configparser interpolation: every % of a URL-quoted password doubled.
            config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        return config

    def offline_config(self, url: str, output: TextIO) -> Config:
        """A config for `--sql` rendering to ``output`` (offline mode never connects)."""
        config = self._config(url)
        config.output_buffer = output
        return config

    def heads(self) -> tuple[str, ...]:
        return tuple(self.script.get_heads())

    def revisions(self) -> tuple[Revision, ...]:
        """Every revision, newest first."""
        return tuple(
            Revision(script.revision, _as_tuple(script.down_revision))
            for script in self.script.walk_revisions()
        )

    def chain_to(self, head: str) -> tuple[str, ...]:
        """Revision ids from the base to ``head`` following first parents (oldest first)."""
        by_id = {revision.id: revision for revision in self.revisions()}
        chain: list[str] = []
        current: str | None = head
        while current is not None:
            chain.append(current)
            down = by_id[current].down
            current = down[0] if down else None
        return tuple(reversed(chain))

    def down_revision(self, revision: str) -> str | None:
        down = _as_tuple(self.script.get_revision(revision).down_revision)
        return down[0] if down else None

    def current(self, connection: Connection) -> tuple[str, ...]:
        return tuple(MigrationContext.configure(connection).get_current_heads())

    def upgrade(self, connection: Connection, revision: str = "head") -> Applied:
        return self.run(connection, revision, upgrade=True)

    def downgrade(self, connection: Connection, revision: str) -> Applied:
        return self.run(connection, revision, upgrade=False)

    def run(
        self,
        connection: Connection,
        destination: str,
        *,
        upgrade: bool,
        on_step: Callable[[MigrationContext, MigrationInfo, set[str]], None] | None = None,
    ) -> Applied:
        """`alembic upgrade|downgrade destination` as the CLI runs it, on ``connection``.

        The session's limits go into the URL env.py sees as libpq options, so an env.py that
        builds its own engine gets them too (and is named in the result). ``on_step`` runs after
        each step on the migration connection (uncommitted DDL visible)."""
        url = _url_with_session(connection)
        # Reads above autobegan: with a transaction open Alembic would neither own one
        # (autocommit_block() asserts it does) nor honour transaction_per_migration.
        connection.commit()
        planned: list[str] = []
        done: list[str] = []
        used: list[int | None] = []  # the backend pid env.py ran the migrations on

        def record(
            *, ctx: MigrationContext, step: MigrationInfo, heads: set[str], run_args: Any
        ) -> None:
            done.append(planned[len(done)] if len(done) < len(planned) else "?")
            if on_step is not None:
                on_step(ctx, step, heads)

        def steps(revision: Any, context: MigrationContext) -> Any:
            # env.py passes its own configure() options; the callback is attached here.
            if context.connection is not None:
                used.append(_backend_pid(context.connection))
            context.on_version_apply_callbacks = (*context.on_version_apply_callbacks, record)
            found = (
                self.script._upgrade_revs(destination, revision)
                if upgrade
                else self.script._downgrade_revs(destination, revision)
            )
            planned[:] = [step.revision.revision for step in found]
            return found

        try:
            with EnvironmentContext(
                self._config(url, connection), self.script, fn=steps, destination_rev=destination
            ):
                self.script.run_env()
        except Exception as exc:
            if connection.in_transaction():
                connection.rollback()
            if not used and not planned:
                raise EnvPyError(
                    f"{self.env_py} raised {type(exc).__name__}: {_one_line(exc)[:800]}. "
                    "The plugin runs env.py in-process as `alembic upgrade` would; an env.py "
                    "that needs its application's runtime (an event loop, settings) must work "
                    "without it when a connection is handed in "
                    "(config.attributes['connection'])."
                ) from exc
            failing = planned[len(done)] if len(done) < len(planned) else None
            raise _migration_error(failing, exc) from exc
        if connection.in_transaction():
            connection.commit()
        return Applied(tuple(done), _foreign(_backend_pid(connection), used))

    def create_base_schema(self, connection: Connection) -> None:
        """Create the schema the first revision starts from ([migrations] base_schema)."""
        if self.base_schema is None:
            return
        if self.base_schema.endswith(".sql"):
            sql = Path(self.base_schema).read_text(encoding="utf-8")
            connection.exec_driver_sql(sql.replace("%", "%%"))  # no bind parameters in a file
        else:
            _base_schema_function(self.base_schema)(connection)
        connection.commit()


def _as_tuple(down: str | Sequence[str] | None) -> tuple[str, ...]:
    if down is None:
        return ()
    if isinstance(down, str):
        return (down,)
    return tuple(down)


def check_single_head(project: AlembicProject) -> CheckResult:
    heads = project.heads()
    evidence = Evidence("alembic heads", "\n".join(heads) or "(none)")
    if len(heads) == 1:
        return passed(f"one head: {heads[0]}", evidence)
    if not heads:
        return failed(
            Failure(
                "The migration history has no head",
                expected="exactly one head revision",
                seen=f"no revision scripts under {project.script.dir} (script_location of "
                f"{project.alembic_ini})",
                remedy=(
                    "The ini is found but its versions folder holds no revision: check that "
                    "the revision files ship with this checkout (not ignored, not in another "
                    "package) and the ini's version_locations, if it sets one."
                ),
            ),
            evidence,
        )
    return failed(
        Failure(
            f"The migration history has {len(heads)} heads",
            expected="exactly one head revision",
            seen="heads: " + ", ".join(heads),
            remedy=(
                "Merge them before the RC: `alembic merge -m 'merge heads' "
                + " ".join(heads)
                + "`, review, and update [migrations] expected_chain."
            ),
        ),
        evidence,
    )


def check_history_chain(project: AlembicProject, expected: Sequence[str]) -> CheckResult:
    """The history ending at head must be exactly ``expected`` (the runbook's chain)."""
    heads = project.heads()
    rendered_expected = " -> ".join(expected) + " (head)"
    if len(heads) != 1:
        return failed(
            Failure(
                "The history chain cannot be read: the history does not have exactly one head",
                expected=rendered_expected,
                seen="heads: " + (", ".join(heads) or "(none)"),
                remedy="Resolve the heads first (see the single-head check).",
            )
        )
    chain = project.chain_to(heads[0])
    tail = chain[-len(expected) :]
    evidence = Evidence("alembic history (base -> head)", "\n".join(chain))
    if tuple(tail) == tuple(expected):
        return passed(" -> ".join(tail) + " (head)", evidence)
    unknown = [rev for rev in expected if rev not in chain]
    return failed(
        Failure(
            "The history chain ending at head differs from the expected chain",
            expected=rendered_expected,
            seen=" -> ".join(tail)
            + " (head)"
            + (f"\nnot in the history at all: {', '.join(unknown)}" if unknown else ""),
            remedy=(
                "Either the backend ships other migrations than this RC expects (check out the "
                "RC's backend revision), or [migrations] expected_chain is out of date."
            ),
        ),
        evidence,
    )


def check_current_not_empty(project: AlembicProject, connection: Connection) -> CheckResult:
    current = project.current(connection)
    evidence = Evidence("alembic current", "\n".join(current) or "(empty)")
    if current:
        return passed(
            "current: " + ", ".join(current),
            evidence,
            **{"alembic current (before the upgrade)": ",".join(current)},
        )
    return failed(
        Failure(
            "`alembic current` is empty: this database has no Alembic version",
            expected="alembic_version holds the deployed revision",
            seen="no row in alembic_version (or no alembic_version table)",
            remedy=(
                "Either this is not the backend's database (check DATABASE_URL), or its tables "
                "were created outside Alembic: see step 1.2's remedies (staging only)."
            ),
        ),
        evidence,
    )


StampHint = Callable[[Sequence[str]], str | None]


def check_upgrade_head(
    project: AlembicProject, connection: Connection, stamp_hint: StampHint | None = None
) -> CheckResult:
    """Runbook 1.2: `alembic upgrade head` finishes without error and current is head after.

    ``stamp_hint`` names the revision to stamp when objects of later revisions already exist
    (the forensics' ``live_stamp_hint``)."""
    before = project.current(connection)
    head = project.heads()[-1]
    start = ", ".join(before) or "base"
    if before == (head,):
        return passed(
            "already at head: nothing to upgrade",
            Evidence("alembic upgrade head", f"current = {head} = head: no revision pending"),
            **{"alembic current (after the upgrade)": head},
        )
    try:
        applied = project.upgrade(connection, "head")
    except EnvPyError as exc:
        return failed(env_py_failure(exc))
    except MigrationError as exc:
        evidence = Evidence("alembic upgrade head", f"from {start}\n{exc}")
        if "already exists" in exc.error:
            hint = stamp_hint(before) if stamp_hint else None
            return failed(_drift_failure(project, before, str(exc), hint), evidence)
        return failed(
            Failure(
                f"`alembic upgrade head` failed in revision {exc.revision}",
                expected=f"upgrade from {start} to {head} without error",
                seen=str(exc)[:2000],
                remedy=(
                    f"Fix revision {exc.revision} (the statement and error above) and rerun; "
                    "the failing step was rolled back (revisions before it that committed, "
                    "under transaction_per_migration, stay applied)."
                ),
            ),
            evidence,
        )
    after = project.current(connection)
    lines = [f"from {start} to {', '.join(after)}", "applied: " + " -> ".join(applied.steps)]
    if applied.foreign_connection:
        lines.append(applied.foreign_connection)
    evidence = Evidence("alembic upgrade head", "\n".join(lines))
    if after != (head,):
        return failed(
            Failure(
                "After `alembic upgrade head` the database is not at head",
                expected=f"current = {head}",
                seen=f"current = {', '.join(after) or '(empty)'}",
                remedy="Check env.py: it must run the migrations on the connection handed in.",
            ),
            evidence,
        )
    note = "; env.py used its own connection (see evidence)" if applied.foreign_connection else ""
    return passed(
        f"upgraded {start} -> {head} ({len(applied.steps)} revision(s)){note}",
        evidence,
        **{"alembic current (after the upgrade)": head},
    )


def _drift_failure(
    project: AlembicProject, before: tuple[str, ...], message: str, hint: str | None
) -> Failure:
    claimed = ", ".join(before) or "base (no alembic_version row)"
    chain = project.chain_to(project.heads()[-1])
    pending = chain[chain.index(before[0]) + 1 :] if before and before[0] in chain else chain
    return Failure(
        "`alembic upgrade head` failed: an object it creates already exists",
        expected=f"the schema matches the claimed revision {claimed}, so the upgrade can run",
        seen=(
            f"{message[:600]}\n"
            f"alembic_version says {claimed}, but the schema already holds objects of a later "
            f"revision: they were created outside Alembic and alembic_version fell behind."
        ),
        remedy=(
            "On staging only (never on production), one of the runbook's two options:\n"
            "1. Preferred: reset the staging database, then a clean `alembic upgrade head`.\n"
            "2. Controlled: `alembic stamp <rev>` with <rev> the newest pending revision whose "
            "objects all exist already (check each one in psql first), then "
            "`alembic upgrade head`.\n"
            f"Pending revisions, oldest first: {', '.join(pending)}" + (f"\n{hint}" if hint else "")
        ),
    )


def check_downgrade_upgrade_smoke(
    project: AlembicProject, connection: Connection, uniques: Sequence[UniqueSpec]
) -> CheckResult:
    """Runbook 1.4: `alembic downgrade -1` then `alembic upgrade head`, each proven on the schema.

    The downgrade must really undo something (a downgrade that only moves alembic_version is
    no rollback), and the upgrade must restore the head schema exactly: both are the schema's
    fingerprint compared with the one read at head."""
    head = project.heads()[-1]
    previous = project.down_revision(head)
    before = project.current(connection)
    if before != (head,):
        return failed(
            Failure(
                "The smoke needs the database at head",
                expected=f"current = {head}",
                seen=f"current = {', '.join(before) or '(empty)'}",
                remedy="Make step 1.2 pass first.",
            )
        )
    at_head = fingerprint(connection)
    steps: list[str] = []

    def failure(title: str, expected: str, seen: str) -> CheckResult:
        return failed(
            Failure(
                title,
                expected,
                seen,
                remedy=(
                    f"Fix the downgrade() of {head} so it reverts exactly what upgrade() does; "
                    "the rollback procedure depends on it. Rerun the smoke on staging."
                ),
            ),
            Evidence("downgrade -1 / upgrade head", "\n".join(steps)),
        )

    try:
        project.downgrade(connection, "-1")
    except MigrationError as exc:
        steps.append(f"alembic downgrade -1: {str(exc)[:1500]}")
        return failure(
            "`alembic downgrade -1` failed", f"downgrade {head} -> {previous}", steps[-1]
        )
    after_down = project.current(connection)
    undone = at_head.differences(fingerprint(connection))
    steps.append(
        f"alembic downgrade -1: current = {', '.join(after_down) or 'base'}; "
        f"{_against_head(undone)}"
    )
    steps.extend(f"  {d.line()}" for d in undone)
    down_state = _unique_states(connection, uniques)
    steps.extend(f"  {line}" for line in down_state)
    expected_down = (previous,) if previous else ()
    if after_down != expected_down:
        return failure(
            "After `alembic downgrade -1` the database is not at the previous revision",
            f"current = {previous or 'base'}",
            f"current = {', '.join(after_down) or 'base'}",
        )
    if not undone:
        return failure(
            "`alembic downgrade -1` changed no schema object",
            f"the downgrade of {head} reverts its schema changes",
            f"the schema after the downgrade equals the schema at head "
            f"({len(at_head.objects)} objects: tables, views, columns, constraints, indexes, "
            "sequences, enum types)",
        )
    try:
        project.upgrade(connection, "head")
    except MigrationError as exc:
        steps.append(f"alembic upgrade head: {str(exc)[:1500]}")
        return failure(
            "`alembic upgrade head` after the downgrade failed", f"back at {head}", steps[-1]
        )
    after_up = project.current(connection)
    not_restored = at_head.differences(fingerprint(connection))
    steps.append(
        f"alembic upgrade head: current = {', '.join(after_up) or 'base'}; "
        f"{_against_head(not_restored)}"
    )
    steps.extend(f"  {d.line()}" for d in not_restored)
    steps.extend(f"  {line}" for line in _unique_states(connection, uniques))
    if after_up != (head,) or not_restored:
        return failure(
            "`alembic upgrade head` after the downgrade did not restore the head schema",
            f"current = {head} and the schema as it was at head",
            f"current = {', '.join(after_up) or 'base'}; {_against_head(not_restored)}\n"
            + "\n".join(d.line() for d in not_restored),
        )
    return CheckResult(
        summary=f"{head} -> {previous or 'base'} -> {head}; undone: {len(undone)} object(s)",
        evidence=(Evidence("downgrade -1 / upgrade head", "\n".join(steps)),),
    )


def _against_head(differences: Sequence[Difference]) -> str:
    """How a schema read after a step compares with the one read at head (Difference.line()
    says "missing" for what only head has, "extra" for what only the schema now has)."""
    if not differences:
        return "schema equal to the schema at head"
    return f"{len(differences)} difference(s) from the schema at head"


def _unique_states(connection: Connection, uniques: Sequence[UniqueSpec]) -> list[str]:
    lines = []
    for spec in uniques:
        result = check_unique_constraint(connection, spec)
        state = "present" if result.ok else "absent"
        lines.append(f"UNIQUE ({', '.join(spec.columns)}) on {spec.table}: {state}")
    return lines


def check_release_downgrades(
    project: AlembicProject, connection: Connection, revisions: Sequence[str]
) -> CheckResult:
    """OPS-02 rollback readiness, rehearsed on a throwaway database (never production): from
    head, each revision of the release is downgraded one step (proven on the schema), and the
    upgrade back to head restores the head schema exactly."""
    project.upgrade(connection, "head")
    at_head = fingerprint(connection)
    head = project.heads()[-1]
    steps: list[str] = []
    before = at_head
    for revision in reversed(revisions):
        previous = project.down_revision(revision)
        try:
            project.downgrade(connection, "-1")
        except MigrationError as exc:
            steps.append(f"downgrade {revision}: {str(exc)[:600]}")
            return _rollback_not_ready(
                revision, f"`alembic downgrade -1` from {revision} failed", steps
            )
        current = project.current(connection)
        after = fingerprint(connection)
        undone, before = before.differences(after), after
        steps.append(
            f"downgrade {revision} -> {', '.join(current) or 'base'}: {len(undone)} change(s)"
        )
        if current != ((previous,) if previous else ()):
            return _rollback_not_ready(
                revision, f"after downgrading {revision}, current is {current}", steps
            )
        if not undone:
            return _rollback_not_ready(
                revision, f"the downgrade of {revision} changed no schema object", steps
            )
    project.upgrade(connection, "head")
    not_restored = at_head.differences(fingerprint(connection))
    steps.append(f"upgrade head -> {head}: {len(not_restored)} difference(s) from the head schema")
    steps.extend(f"  {d.line()}" for d in not_restored)
    if not_restored:
        return _rollback_not_ready(head, "the upgrade back did not restore the head schema", steps)
    return passed(
        f"{len(revisions)} revision(s) of the release downgrade and upgrade cleanly "
        "(rehearsed on a throwaway database)",
        Evidence("downgrade rehearsal", "\n".join(steps)),
    )


def _rollback_not_ready(revision: str, seen: str, steps: list[str]) -> CheckResult:
    return failed(
        Failure(
            f"The release cannot be rolled back past {revision}",
            expected="each revision of this release downgrades; the upgrade back restores head",
            seen=seen,
            remedy=f"Fix the downgrade() of {revision} before widening the rollout (OPS-02).",
        ),
        Evidence("downgrade rehearsal", "\n".join(steps)),
    )


def env_py_failure(exc: EnvPyError) -> Failure:
    return Failure(
        "env.py could not be run",
        expected="env.py runs the migrations on the connection handed in",
        seen=str(exc),
        remedy="Make env.py work without the application's runtime when "
        "config.attributes['connection'] is set (README: \"Your env.py\"), then rerun.",
    )


def not_replayable(project: AlembicProject, exc: MigrationError) -> Failure:
    """The history cannot be replayed on a fresh database: where, and the two ways out."""
    start = f"the base schema ({project.base_schema})" if project.base_schema else "empty"
    fix = (
        f"Make [migrations] base_schema ({project.base_schema}) create the schema that revision "
        f"{exc.revision} expects, then rerun."
        if project.base_schema
        else "Two ways out:\n"
        "1. Declare how the schema before the first revision is made: in the rollout config, "
        '[migrations] base_schema = "package.module:create_base" (a function called with a '
        "SQLAlchemy connection, e.g. running the application's Base.metadata.create_all), or\n"
        '2. base_schema = "base_schema.sql": a file with that schema (`pg_dump --schema-only '
        "--no-owner` of a database just before the first revision).\n"
        "Until then the forensics cannot fingerprint this history, no ephemeral target can "
        "be migrated and the verdict stays FAIL (no waiver covers this); on a staging target "
        "the pending revisions are rehearsed on a schema-only copy of it, and the upgrade "
        "(1.2) and smoke (1.4) still run and decide."
    )
    return Failure(
        f"The migration history cannot be replayed on a fresh database: revision "
        f"{exc.revision} fails",
        expected=f"every revision applies in order, starting from {start}",
        seen=str(exc)[:2000],
        remedy=fix,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _migration_error(revision: str | None, exc: Exception) -> MigrationError:
    if isinstance(exc, DBAPIError):
        return MigrationError(revision, exc.statement, _one_line(exc.orig or exc))
    return MigrationError(revision, None, f"{type(exc).__name__}: {_one_line(exc)}")


def _url_with_session(connection: Connection) -> str:
    """The connection's URL, with its timeouts and application_name as libpq parameters."""
    row = connection.execute(
        text(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),"
            " current_setting('application_name')"
        )
    ).one()
    url = connection.engine.url
    query = dict(url.query)
    query.setdefault("options", f"-c lock_timeout={row[0]} -c statement_timeout={row[1]}")
    if row[2]:
        query.setdefault("application_name", row[2])
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def _backend_pid(connection: Connection) -> int | None:
    info = getattr(connection.connection.dbapi_connection, "info", None)
    pid = getattr(info, "backend_pid", None)
    return pid if isinstance(pid, int) else None


def _foreign(mine: int | None, used: Sequence[int | None]) -> str | None:
    """What env.py ran the migrations on, when it was not the handed-in connection."""
    if not used or used[0] == mine:
        return None
    return (
        f"env.py ran the migrations on a connection of its own (backend pid {used[0]}), not on "
        f"the one the plugin handed in (pid {mine}, which holds the phase lock). The "
        "session limits reached it through the URL; to run under the lock, env.py must use "
        "config.attributes['connection'] when it is set (README: \"Your env.py\")."
    )


def _base_schema_function(spec: str) -> Callable[[Connection], None]:
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        loaded = importlib.util.spec_from_file_location(Path(where).stem, where)
        assert loaded is not None and loaded.loader is not None
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    function: Callable[[Connection], None] = getattr(module, name)
    return function


@dataclass(frozen=True)
class MigrationsConfig:
    alembic_ini: Path
    expected_chain: tuple[str, ...]
    baseline: str  # the revision an ephemeral target starts from
    # How the schema before the first revision is made: "module:function" or "file.py:function"
    # (called with a connection) or "file.sql"; None: the history starts from an empty database.
    base_schema: str | None = None


def script_location_problem(alembic_ini: Path) -> str | None:
    """Why the ini's script_location names no folder (None when it does). A relative location
    is looked up against the current directory, as Alembic does, then against the ini's folder
    (where `alembic` is run from)."""
    parser = configparser.ConfigParser(defaults={"here": str(alembic_ini.parent)})
    try:
        parser.read(alembic_ini, encoding="utf-8")
        location = parser.get("alembic", "script_location", fallback=None)
    except configparser.Error as exc:
        return f"{alembic_ini} cannot be read as an ini file ({exc})"
    if not location:
        return f"{alembic_ini} has no script_location in its [alembic] section"
    if ":" in location and not os.path.isabs(location):
        package = location.split(":")[0]
        if importlib.util.find_spec(package.split(".")[0]) is None:
            return f"script_location {location!r}: package {package!r} is not installed"
        return None
    if Path(location).is_dir() or (alembic_ini.parent / location).is_dir():
        return None
    return (
        f"script_location {location!r} of {alembic_ini} names no folder: looked up at "
        f"{Path(location).absolute()} (the current directory) and {alembic_ini.parent / location} "
        "(the ini's folder). Relative locations resolve against the ini's folder; write "
        "%(here)s/<folder> to be explicit."
    )
