"""The fingerprint of every revision, from one walk of the migrations on a scratch database.

A revision's fingerprint is the schema after upgrading exactly to it (its ancestors and itself,
nothing else). One ``upgrade heads`` run records every step after which the revision is the
only head; each revision that run could not record (a sibling branch applied before it) is
replayed on a fresh scratch database. A linear history therefore costs one upgrade, plus a
re-read of what each step touched (``SchemaLog``)."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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
from pytest_ledger_rollout.results import DodFailure


@dataclass(frozen=True)
class History:
    scripts_sha256: str  # which migration scripts these fingerprints belong to
    order: tuple[str, ...]  # topological, base first
    parents: dict[str, tuple[str, ...]]
    fingerprints: dict[str, Fingerprint]
    # The schema before the first revision: empty, or what [migrations] base_schema creates.
    base: Fingerprint = EMPTY
    # revision -> what its downgrade did on the walk's database (absent: not proven).
    downgrades: dict[str, str] = field(default_factory=dict)

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
    also downgrades from head, proving each revision's downgrade (see ``_prove_downgrades``)."""
    revisions = project.revisions()
    order = tuple(r.id for r in reversed(revisions))
    found: dict[str, Fingerprint] = {}
    downgrades: dict[str, str] = {}
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
    downgrades: dict[str, str]
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
            raise DodFailure(not_replayable(project, exc)) from None
        except EnvPyError as exc:
            raise DodFailure(env_py_failure(exc)) from None
        # The incremental reads checked against one full read of the committed result (an env.py
        # connection of its own is closed by now: the last step's read stands for it).
        on_mine = applied.foreign_connection is None
        final = read(connection) if on_mine else last[0]
        if incremental and final is not None and final != fingerprint(connection):
            return None
        downgrades = (
            _prove_downgrades(project, connection, {**known, **recorded}, base, read)
            if destination == "heads"
            else {}
        )
    return _Walked(recorded, downgrades, base)


def _prove_downgrades(
    project: AlembicProject,
    connection: Connection,
    fingerprints: dict[str, Fingerprint],
    base: Fingerprint,
    read: Callable[[Connection], Fingerprint],
) -> dict[str, str]:
    """From head down to base in one env.py run: after each step, is the schema the
    fingerprint of the revision it went back to? Stops at the first that is not (or fails);
    the revisions below it stay unproven (absent)."""
    verdicts: dict[str, str] = {}

    def compare(ctx: MigrationContext, step: MigrationInfo, heads: set[str]) -> None:
        assert ctx.connection is not None
        revision, back = str(step.up_revision_id), step.down_revision_ids
        parent = back[0] if len(back) == 1 else "base" if not back else None
        expected = base if parent == "base" else fingerprints.get(parent or "")
        if expected is None or heads != set(back):
            verdicts[revision] = "downgrade ran; not compared (a branch point)"
            return
        differences = expected.differences(read(ctx.connection))
        if not differences:
            verdicts[revision] = f"downgrade restores {parent}"
            return
        shown = "; ".join(d.line() for d in differences[:5])
        more = f" (+{len(differences) - 5} more)" if len(differences) > 5 else ""
        verdicts[revision] = f"downgrade does not restore {parent}: {shown}{more}"
        raise _Stop

    try:
        project.run(connection, "base", upgrade=False, on_step=compare)
    except MigrationError as exc:
        if not isinstance(exc.__cause__, _Stop) and exc.revision is not None:
            verdicts[exc.revision] = f"downgrade fails: {exc}"
    return verdicts
