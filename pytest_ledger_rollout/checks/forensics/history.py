"""The fingerprint of every revision, from one walk of the migrations on a scratch database.

A revision's fingerprint is the schema after upgrading exactly to it (its ancestors and itself,
nothing else). One ``upgrade heads`` run records every step after which the revision is the
only head; each revision that run could not record (a sibling branch applied before it) is
replayed on a fresh scratch database. A linear history therefore costs one upgrade, plus a
re-read of what each step touched (``SchemaLog``)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

from pytest_ledger_rollout.checks.fingerprint import (
    EMPTY,
    Fingerprint,
    SchemaLog,
    fingerprint,
)
from pytest_ledger_rollout.checks.migrations import (
    AlembicProject,
    EnvPyError,
    MigrationError,
    env_py_failure,
    not_replayable,
)
from pytest_ledger_rollout.results import CheckResult, DodFailure, Evidence, Failure, failed, passed
from pytest_ledger_rollout.targets.postgres import (
    EphemeralSettings,
    EphemeralUnavailable,
    start_ephemeral,
)


class NotReplayable(DodFailure):
    """The history fails on a fresh database (from empty, or from the declared base schema)."""


@dataclass(frozen=True)
class DowngradeProof:
    """What a revision's downgrade did on the walk's database."""

    holds: bool  # it restored its parent's schema (or ran at a branch point, not comparable)
    detail: str  # for people: "downgrade restores X", "downgrade fails: ..."


@dataclass(frozen=True)
class History:
    scripts_sha256: str  # which migration scripts these fingerprints belong to
    order: tuple[str, ...]  # topological, base first
    parents: dict[str, tuple[str, ...]]
    fingerprints: dict[str, Fingerprint]
    # The schema before the first revision: empty, or what [migrations] base_schema creates.
    base: Fingerprint = EMPTY
    # revision -> what its downgrade did on the walk's database (absent: not proven).
    downgrades: dict[str, DowngradeProof] = field(default_factory=dict)

    def ancestors(self, revision: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.parents[revision])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.parents[current])
        return seen


def scripts_sha256(project: AlembicProject) -> str:
    """Hash of env.py and every revision script (path relative to the script folder + bytes)."""
    files = [project.env_py]
    if project.base_schema is not None:
        files.append(Path(project.base_schema.rpartition(":")[0] or project.base_schema))
    files += [Path(str(s.path)) for s in project.script.walk_revisions()]
    digest = hashlib.sha256()
    for path in sorted(files):
        # Names relative to alembic.ini: the same project hashes alike wherever it is checked out.
        name = os.path.relpath(path, project.alembic_ini.parent)
        body = path.read_bytes() if path.is_file() else b""  # a module base_schema: its name
        digest.update(name.encode() + b"\0" + body + b"\0")
    return digest.hexdigest()


def fingerprint_history(project: AlembicProject, server_url: str) -> History:
    """Walk the whole history on scratch databases of the server at ``server_url`` (an
    ephemeral server: it needs CREATE DATABASE); they are dropped afterwards. The first walk
    also downgrades from head, proving each revision's downgrade (see ``prove_downgrades``)."""
    revisions = project.revisions()
    order = tuple(r.id for r in reversed(revisions))
    found: dict[str, Fingerprint] = {}
    downgrades: dict[str, DowngradeProof] = {}
    base = EMPTY
    destination = "heads"
    while True:
        walked = _walk(project, server_url, destination, found, incremental=True)
        if walked is None:
            warnings.warn(
                f"fingerprints read step by step differ from a full catalog read after "
                f"`upgrade {destination}`: walked again with full reads",
                stacklevel=2,
            )
            walked = _walk(project, server_url, destination, found, incremental=False)
            assert walked is not None
        found.update(walked.recorded)
        if destination == "heads":
            downgrades, base = walked.downgrades, walked.base
        missing = [rev for rev in order if rev not in found]
        if not missing:
            break
        destination = missing[0]
    return History(
        scripts_sha256=scripts_sha256(project),
        order=order,
        parents={r.id: r.down for r in revisions},
        fingerprints=found,
        base=base,
        downgrades=downgrades,
    )


@contextmanager
def scratch_database(server_url: str) -> Iterator[Connection]:
    """A connection to a new, empty database of the server, dropped on exit (in the
    background: DROP DATABASE waits for the closed sessions' backends to exit, ~0.1 s, and
    nothing waits for the drop; the servers it runs on are throwaway ones)."""
    name = f"ledger_rollout_fp_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        scratch = create_engine(make_url(server_url).set(database=name))
        try:
            with scratch.connect() as connection:
                yield connection
        finally:
            scratch.dispose()
    finally:
        threading.Thread(target=_drop, args=(admin, name), daemon=True).start()


def _drop(admin: Engine, name: str) -> None:
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except DBAPIError:
        pass  # the throwaway server stopped first: the database went with it
    finally:
        admin.dispose()


@dataclass(frozen=True)
class _Walked:
    recorded: dict[str, Fingerprint]
    downgrades: dict[str, DowngradeProof]
    base: Fingerprint


class _Stop(Exception):
    """Ends the downgrade pass at the first revision that does not restore its parent."""


def _walk(
    project: AlembicProject,
    server_url: str,
    destination: str,
    known: dict[str, Fingerprint],
    *,
    incremental: bool,
) -> _Walked | None:
    """``alembic upgrade destination`` on a new scratch database (from the base schema) in one
    env.py run, fingerprinting after every step that leaves its revision as the only head and
    that ``known`` lacks (same connection, so uncommitted DDL is visible). Incrementally where
    the server allows; None when the incremental fingerprint differs from a full read at the
    end. After ``upgrade heads``, the downgrades are proven on the same database."""
    recorded: dict[str, Fingerprint] = {}
    with scratch_database(server_url) as connection:
        project.create_base_schema(connection)
        incremental = incremental and SchemaLog.install(connection)
        # The DDL log is kept per session: one SchemaLog per connection the migrations run on
        # (env.py may open its own), each starting with a full read.
        logs: dict[int, SchemaLog] = {}

        def read(on: Connection) -> Fingerprint:
            if not incremental:
                return fingerprint(on)
            return logs.setdefault(id(on), SchemaLog()).read(on)

        base = read(connection)  # the base schema, read in full

        last: list[Fingerprint | None] = [None]  # the last step's read, if it was read

        def record(ctx: MigrationContext, step: MigrationInfo, heads: set[str]) -> None:
            assert ctx.connection is not None
            revision = step.up_revision_id
            last[0] = None
            if revision is not None and heads == {revision} and revision not in known:
                recorded[revision] = last[0] = read(ctx.connection)

        try:
            applied = project.run(connection, destination, upgrade=True, on_step=record)
        except MigrationError as exc:
            raise NotReplayable(not_replayable(project, exc)) from None
        except EnvPyError as exc:
            raise DodFailure(env_py_failure(exc)) from None
        # The incremental reads checked against one full read of the committed result (an env.py
        # connection of its own is closed by now: the last step's read stands for it).
        on_mine = applied.foreign_connection is None
        final = read(connection) if on_mine else last[0]
        if incremental and final is not None and final != fingerprint(connection):
            return None
        downgrades = (
            prove_downgrades(project, connection, {**known, **recorded}, base, read)
            if destination == "heads"
            else {}
        )
    return _Walked(recorded, downgrades, base)


def prove_downgrades(
    project: AlembicProject,
    connection: Connection,
    fingerprints: dict[str, Fingerprint],
    base: Fingerprint,
    read: Callable[[Connection], Fingerprint],
    destination: str = "base",
) -> dict[str, DowngradeProof]:
    """From head down to ``destination`` in one env.py run: after each step, is the schema the
    fingerprint of the revision it went back to? Stops at the first that is not (or fails);
    the revisions below it stay unproven (absent)."""
    verdicts: dict[str, DowngradeProof] = {}

    def compare(ctx: MigrationContext, step: MigrationInfo, heads: set[str]) -> None:
        assert ctx.connection is not None
        revision, back = str(step.up_revision_id), step.down_revision_ids
        parent = back[0] if len(back) == 1 else "base" if not back else None
        expected = base if parent == "base" else fingerprints.get(parent or "")
        if expected is None or heads != set(back):
            verdicts[revision] = DowngradeProof(
                True, "downgrade ran; not compared (a branch point)"
            )
            return
        seen = read(ctx.connection)
        differences = () if seen.objects == expected.objects else expected.differences(seen)
        if not differences:
            verdicts[revision] = DowngradeProof(True, f"downgrade restores {parent}")
            return
        shown = "; ".join(d.line() for d in differences[:5])
        more = f" (+{len(differences) - 5} more)" if len(differences) > 5 else ""
        verdicts[revision] = DowngradeProof(
            False, f"downgrade does not restore {parent}: {shown}{more}"
        )
        raise _Stop

    try:
        project.run(connection, destination, upgrade=False, on_step=compare)
    except MigrationError as exc:
        if not isinstance(exc.__cause__, _Stop) and exc.revision is not None:
            verdicts[exc.revision] = DowngradeProof(False, f"downgrade fails: {exc}")
    return verdicts


# --- the pending revisions on a copy of the target's schema -----------------------------------
#
# For a history that cannot be replayed on a fresh database (no [migrations] base_schema):
# ``pg_dump --schema-only`` of the target (read-only, as the run's own user), loaded into a
# throwaway Postgres with the target's alembic_version, then ``alembic upgrade heads`` there and
# each pending downgrade back. The target is only read (pg_dump runs in a read-only
# transaction); its password reaches pg_dump through a private PGPASSFILE, never argv.

DUMP_TIMEOUT_S = 600
# pg_dump 15.14+ brackets its script in psql meta-commands (\restrict KEY ... \unrestrict KEY).
_META_COMMAND = re.compile(r"^\\(un)?restrict\b.*$", re.MULTILINE)
COPY_COMMAND = (
    "pg_dump --schema-only --no-owner --no-privileges (read-only, as the run's user) -> a "
    "throwaway Postgres, with the target's alembic_version"
)


class CopyFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        super().__init__(failure.title)


@dataclass(frozen=True)
class CopyRehearsal:
    """What the pending revisions did on the copy."""

    result: CheckResult  # passed when every pending revision applied cleanly to the copy
    # The claimed revision's and each pending revision's schema on the copy, and the pending
    # downgrades proven back to the claimed revision (None when the copy could not be upgraded).
    history: History | None


def rehearse_on_copy(
    project: AlembicProject,
    target_url: str,
    current: Sequence[str],
    target_before: Fingerprint,
    settings: EphemeralSettings,
    lock_wait_ms: int,
    register_secret: Callable[[str | None], None],
) -> CopyRehearsal:
    """Copy the target's schema into a throwaway Postgres and upgrade the copy to head."""
    try:
        dump = dump_schema(target_url, settings, lock_wait_ms)
        with start_ephemeral(settings) as server:
            register_secret(server.password)
            with scratch_database(server.url) as connection:
                return _rehearse(project, connection, dump, tuple(current), target_before)
    except CopyFailed as exc:
        return CopyRehearsal(failed(exc.failure), None)
    except EphemeralUnavailable as exc:
        return CopyRehearsal(failed(_no_copy(f"no throwaway Postgres could start: {exc}")), None)


def dump_schema(target_url: str, settings: EphemeralSettings, lock_wait_ms: int) -> str:
    """``pg_dump --schema-only`` of the target, in a read-only session (the password in a
    private PGPASSFILE, never on the command line)."""
    from psycopg.conninfo import make_conninfo

    from pytest_ledger_rollout.targets.postgres.local import (
        find_client,  # the local provider's module: loaded on use
    )

    try:
        pg_dump = find_client("pg_dump", settings)
    except EphemeralUnavailable as exc:
        raise CopyFailed(_no_copy(str(exc))) from None
    url = make_url(target_url)
    params: dict[str, Any] = {
        "host": url.host, "port": url.port, "user": url.username, "dbname": url.database,
    }  # fmt: skip
    for key, value in url.query.items():  # as libpq reads them: the query overrides
        if key != "password":
            params[key] = value if isinstance(value, str) else value[-1]
    params["options"] = " ".join(
        filter(None, (params.get("options"), "-c default_transaction_read_only=on"))
    )
    params.setdefault("application_name", "pytest-ledger-rollout schema copy")
    conninfo = make_conninfo("", **{k: v for k, v in params.items() if v is not None})
    argv = [
        pg_dump, "--schema-only", "--no-owner", "--no-privileges", "--no-subscriptions",
        "--no-publications", f"--lock-wait-timeout={lock_wait_ms}", "--dbname", conninfo,
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    with tempfile.TemporaryDirectory(prefix="ledger-rollout-dump-") as private:
        if url.password is not None:
            passfile = Path(private) / "pgpass"
            escaped = str(url.password).replace("\\", "\\\\").replace(":", "\\:")
            passfile.touch(mode=0o600)
            passfile.write_text(f"*:*:*:*:{escaped}\n", encoding="utf-8")
            environment["PGPASSFILE"] = str(passfile)
        try:
            done = subprocess.run(
                argv, env=environment, capture_output=True, text=True, check=False,
                timeout=DUMP_TIMEOUT_S,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CopyFailed(_no_copy(f"{pg_dump}: {exc}")) from None
    if done.returncode != 0:
        raise CopyFailed(_no_copy(f"{pg_dump} exited {done.returncode}: {done.stderr.strip()}"))
    return done.stdout


def _rehearse(
    project: AlembicProject,
    connection: Connection,
    dump: str,
    current: tuple[str, ...],
    target_before: Fingerprint,
) -> CopyRehearsal:
    try:
        # The dump sets search_path to '' for the session: reset before Alembic runs.
        connection.exec_driver_sql(_META_COMMAND.sub("", dump).replace("%", "%%"))
        connection.exec_driver_sql("RESET ALL")
        for revision in current:
            connection.execute(
                text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": revision}
            )
        connection.commit()
    except Exception as exc:  # the dump holds what the target holds: say what failed, plainly
        if connection.in_transaction():
            connection.rollback()
        message = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise CopyFailed(
            _no_copy(f"loading the dump into the throwaway failed: {message[:800]}")
        ) from None
    before = fingerprint(connection)
    recorded: dict[str, Fingerprint] = {}

    def record(ctx: MigrationContext, step: MigrationInfo, heads: set[str]) -> None:
        assert ctx.connection is not None
        revision = step.up_revision_id
        if revision is not None and heads == {revision}:
            recorded[revision] = fingerprint(ctx.connection)

    start = ", ".join(current) or "base"
    try:
        applied = project.run(connection, "heads", upgrade=True, on_step=record)
    except EnvPyError as exc:
        return CopyRehearsal(failed(env_py_failure(exc)), None)
    except MigrationError as exc:
        return CopyRehearsal(
            failed(
                Failure(
                    f"Pending revision {exc.revision} fails on a copy of the target's schema",
                    expected=f"the pending revisions apply from {start} to head on a "
                    "schema-only copy of the target",
                    seen=str(exc)[:2000],
                    remedy=(
                        f"Fix revision {exc.revision} (or the target's schema it runs into: "
                        "the statement and error above). The upgrade was not attempted on the "
                        "target. The copy holds the target's schema and alembic_version, no "
                        "other rows: a revision that needs the target's data can fail here "
                        "alone; declaring [migrations] base_schema lets the history be "
                        "replayed and fingerprinted instead."
                    ),
                ),
                Evidence("schema copy", f"{COPY_COMMAND}\nalembic upgrade heads from {start}"),
            ),
            None,
        )
    fingerprints = dict(recorded)
    if len(current) == 1:
        fingerprints[current[0]] = before
    destination = current[0] if len(current) == 1 else "base"
    downgrades = (
        prove_downgrades(project, connection, fingerprints, before, fingerprint, destination)
        if applied.steps and len(current) <= 1
        else {}
    )
    revisions = project.revisions()
    # In the target's own spelling: Postgres re-spells some definitions on a dump's round trip
    # (CHECK (x = ANY (ARRAY[...]))), so what the upgrade left alone is taken from the target.
    fingerprints = {
        rev: in_target_spelling(fp, before, target_before) for rev, fp in fingerprints.items()
    }
    history = History(
        scripts_sha256=scripts_sha256(project),
        order=tuple(r.id for r in reversed(revisions)),
        parents={r.id: r.down for r in revisions},
        fingerprints=fingerprints,
        base=EMPTY if current else before,
        downgrades=downgrades,
    )
    lines = [
        COPY_COMMAND,
        f"objects copied: {len(before.objects)}",
        f"alembic upgrade heads on the copy: from {start}",
        "applied: " + (" -> ".join(applied.steps) or "(nothing pending)"),
    ]
    return CopyRehearsal(
        passed(
            f"{len(applied.steps)} pending revision(s) apply cleanly to a schema-only copy of "
            f"the target ({start} -> head); fingerprints cannot be compared: the history "
            "cannot be replayed (step 1.2)",
            Evidence("pending revisions on a copy of the target's schema", "\n".join(lines)),
        ),
        history,
    )


def in_target_spelling(
    fingerprint: Fingerprint, copy_before: Fingerprint, target_before: Fingerprint
) -> Fingerprint:
    """``fingerprint`` (of the copy) with every object the pending revisions left as the copy
    had it taken from the target as the target spells it."""
    copied = {(o.kind, o.name): o for o in copy_before.objects}
    target = {(o.kind, o.name): o for o in target_before.objects}
    return Fingerprint(
        frozenset(
            target[key] if key in target and copied.get(key) == o else o
            for o in fingerprint.objects
            for key in [(o.kind, o.name)]
        )
    )


def _no_copy(seen: str) -> Failure:
    return Failure(
        "The target's schema could not be copied to rehearse the pending revisions",
        expected="a schema-only copy of the target in a throwaway Postgres (pg_dump --schema-only)",
        seen=seen,
        remedy=(
            "pg_dump must be at least the server's major version and the run's user must be "
            "able to read the schema; or declare [migrations] base_schema so the history can be "
            "replayed on a fresh database. The upgrade was not attempted."
        ),
    )
