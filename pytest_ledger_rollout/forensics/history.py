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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

from ..migrations import AlembicProject
from .fingerprint import Fingerprint, SchemaLog, fingerprint


@dataclass(frozen=True)
class History:
    scripts_sha256: str  # which migration scripts these fingerprints belong to
    order: tuple[str, ...]  # topological, base first
    parents: dict[str, tuple[str, ...]]
    fingerprints: dict[str, Fingerprint]

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
    files = [Path(project.script.dir) / "env.py"]
    files += [Path(str(s.path)) for s in project.script.walk_revisions()]
    digest = hashlib.sha256()
    for path in sorted(files):
        # Names relative to alembic.ini: the same project hashes alike wherever it is checked out.
        name = os.path.relpath(path, project.alembic_ini.parent)
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
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
    )


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
    """``alembic upgrade destination`` on a new scratch database in one env.py run,
    fingerprinting after every step that leaves its revision as the only head and that
    ``known`` lacks (same connection, so uncommitted DDL is visible). Incrementally where the
    server allows; None when the last step's incremental fingerprint differs from a full read."""
    script = project.script
    recorded: dict[str, Fingerprint] = {}
    confirmed = True
    steps_left = 0

    with scratch_database(server_url) as connection:
        log = SchemaLog() if incremental and SchemaLog.install(connection) else None

        def record(
            *, ctx: MigrationContext, step: MigrationInfo, heads: set[str], run_args: Any
        ) -> None:
            nonlocal confirmed, steps_left
            assert ctx.connection is not None
            steps_left -= 1
            revision = step.up_revision_id
            wanted = revision is not None and heads == {revision} and revision not in known
            if log is None:
                if wanted:
                    recorded[str(revision)] = fingerprint(ctx.connection)
                return
            if wanted or not steps_left:
                current = log.read(ctx.connection)
                if wanted:
                    recorded[str(revision)] = current
                if not steps_left:
                    confirmed = current == fingerprint(ctx.connection)

        def steps(revision: Any, context: MigrationContext) -> Any:
            # env.py passes its own configure() options, so the callback is attached here,
            # where Alembic hands over the context it built (the hook command.upgrade uses).
            nonlocal steps_left
            context.on_version_apply_callbacks = (*context.on_version_apply_callbacks, record)
            upgrades = script._upgrade_revs(destination, revision)
            steps_left = len(upgrades)
            return upgrades

        config = project._config(connection)
        try:
            with EnvironmentContext(config, script, fn=steps, destination_rev=destination):
                script.run_env()
        finally:
            if connection.in_transaction():
                connection.rollback()  # a scratch database: nothing to keep
    return recorded if confirmed else None
