"""The fingerprint of every revision, from one walk of the migrations on a scratch database.

A revision's fingerprint is the schema after upgrading exactly to it (its ancestors and itself,
nothing else). One ``upgrade heads`` run records every step after which the revision is the
only head; each revision that run could not record (a sibling branch applied before it) is
replayed on a fresh scratch database. A linear history therefore costs one upgrade, plus a
re-read of what each step touched (``SchemaLog``)."""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

from ..migrations import AlembicProject, MigrationError, not_replayable
from ..results import DodFailure
from .fingerprint import EMPTY, Fingerprint, SchemaLog, fingerprint


@dataclass(frozen=True)
class History:
    scripts_sha256: str  # which migration scripts these fingerprints belong to
    order: tuple[str, ...]  # topological, base first
    parents: dict[str, tuple[str, ...]]
    fingerprints: dict[str, Fingerprint]
    # The schema before the first revision: empty, or what [migrations] base_schema creates.
    base: Fingerprint = EMPTY

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
    ephemeral server: it needs CREATE DATABASE); they are dropped afterwards."""
    revisions = project.revisions()
    order = tuple(r.id for r in reversed(revisions))
    found: dict[str, Fingerprint] = {}
    destination = "heads"
    while True:
        recorded = _walk(project, server_url, destination, found, incremental=True)
        if recorded is None:
            warnings.warn(
                f"fingerprints read step by step differ from a full catalog read after "
                f"`upgrade {destination}`: walked again with full reads",
                stacklevel=2,
            )
            recorded = _walk(project, server_url, destination, found, incremental=False)
            assert recorded is not None
        found.update(recorded)
        missing = [rev for rev in order if rev not in found]
        if not missing:
            break
        destination = missing[0]
    return History(
        scripts_sha256=scripts_sha256(project),
        order=order,
        parents={r.id: r.down for r in revisions},
        fingerprints=found,
        base=base_fingerprint(project, server_url),
    )


def base_fingerprint(project: AlembicProject, server_url: str) -> Fingerprint:
    if project.base_schema is None:
        return EMPTY
    with scratch_database(server_url) as connection:
        project.create_base_schema(connection)
        return fingerprint(connection)


def _replay(
    project: AlembicProject,
    connection: Connection,
    destination: str,
    on_step: Callable[[MigrationContext, MigrationInfo, set[str]], None] | None = None,
    *,
    upgrade: bool = True,
) -> None:
    """One env.py run on a scratch database; a failing revision is the structured failure."""
    try:
        project.run(connection, destination, upgrade=upgrade, on_step=on_step)
    except MigrationError as exc:
        if not upgrade:
            raise
        raise DodFailure(not_replayable(project, exc)) from None


@contextmanager
def scratch_database(server_url: str) -> Iterator[Connection]:
    """A connection to a new, empty database of the server, dropped on exit."""
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
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _walk(
    project: AlembicProject,
    server_url: str,
    destination: str,
    known: dict[str, Fingerprint],
    *,
    incremental: bool,
) -> dict[str, Fingerprint] | None:
    """``alembic upgrade destination`` on a new scratch database (from the base schema) in one
    env.py run, fingerprinting after every step that leaves its revision as the only head and
    that ``known`` lacks (same connection, so uncommitted DDL is visible). Incrementally where
    the server allows; None when the incremental fingerprint differs from a full read at the
    end."""
    recorded: dict[str, Fingerprint] = {}
    with scratch_database(server_url) as connection:
        project.create_base_schema(connection)
        log = SchemaLog() if incremental and SchemaLog.install(connection) else None
        if log is not None:
            log.read(connection)  # the base schema, read in full

        def record(ctx: MigrationContext, step: MigrationInfo, heads: set[str]) -> None:
            assert ctx.connection is not None
            revision = step.up_revision_id
            if revision is None or heads != {revision} or revision in known:
                return
            recorded[revision] = (log.read if log else fingerprint)(ctx.connection)

        _replay(project, connection, destination, record)
        if log is not None and log.read(connection) != fingerprint(connection):
            return None
    return recorded


def prove_downgrades(
    project: AlembicProject, history: History, revisions: Sequence[str], server_url: str
) -> list[str]:
    """Downgrade ``revisions`` (oldest first) one by one from head on a scratch database, in
    one env.py run, comparing each step's schema with the fingerprint of the revision it goes
    back to. Returns one line per revision: ``ok``, or what is wrong (first failure stops)."""
    if not revisions:
        return []
    lines: list[str] = []
    destination = project.down_revision(revisions[0]) or "base"
    with scratch_database(server_url) as connection:
        project.create_base_schema(connection)
        _replay(project, connection, "heads")

        def compare(ctx: MigrationContext, step: MigrationInfo, heads: set[str]) -> None:
            assert ctx.connection is not None
            back_to = step.down_revision_ids
            expected = history.fingerprints[back_to[0]] if back_to else history.base
            differences = expected.differences(fingerprint(ctx.connection))
            verdict = (
                "restores " + (back_to[0] if back_to else "base")
                if not differences
                else f"DOES NOT RESTORE {back_to[0] if back_to else 'base'}: "
                + "; ".join(d.line() for d in differences[:5])
                + (f" (+{len(differences) - 5} more)" if len(differences) > 5 else "")
            )
            lines.append(f"{step.up_revision_id}: downgrade {verdict}")

        try:
            _replay(project, connection, destination, compare, upgrade=False)
        except MigrationError as exc:
            lines.append(f"{exc.revision}: downgrade FAILS: {exc}")
    return lines
