"""Fingerprinting every revision vs a plain `alembic upgrade head` of the same history.

Both sides start from the project's alembic.ini and the server URL, load the migration scripts
once, and get a database of their own through the same `scratch_database` (create, connect,
drop: the database lifecycle). Baseline: `alembic upgrade head` (the Python API, in process).
Candidate: `fingerprint_history`, which also hashes the scripts, installs its DDL log,
fingerprints every revision and downgrades every revision back to base, comparing each step
with its parent's fingerprint. For the reference chain and a generated 100-revision history;
the rounds alternate between the sides. Printed twice: whole, and with each side's own time in
the lifecycle taken out (measured around it); then, for context only, the walk against the DDL
it runs without fingerprints (`upgrade head` + `downgrade base` on one database). Then the time
to fingerprint a live 200-table schema (catalog only).
Prints medians of BENCH_ROUNDS rounds. Budgets: walk / upgrade <= 2; live 200 tables < 1 s.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

from pytest_ledger_rollout.checks.fingerprint import fingerprint
from pytest_ledger_rollout.checks.forensics import history
from pytest_ledger_rollout.checks.forensics.history import fingerprint_history, scratch_database
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    start_ephemeral,
)

REPO = Path(__file__).resolve().parent.parent
ENV_PY = REPO / "tests" / "projects" / "branchy" / "migrations" / "env.py"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))

REVISION = '''"""generated {index}"""

import sqlalchemy as sa
from alembic import op

revision = "gen_{index:03d}"
down_revision = {down}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "t_{index:03d}",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, server_default="x"),
        sa.Column("amount", sa.Numeric(18, 2)),
    )
    op.create_index("ix_t_{index:03d}_name", "t_{index:03d}", ["name"])


def downgrade() -> None:
    op.drop_table("t_{index:03d}")
'''


def generated_project(folder: Path, count: int) -> Path:
    """A linear history of ``count`` revisions, each a table with an identity and an index."""
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    shutil.copy(ENV_PY, folder / "migrations" / "env.py")
    (folder / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = os\n"
        "sqlalchemy.url = postgresql+psycopg://localhost/unused\n"
    )
    for index in range(count):
        down = f'"gen_{index - 1:03d}"' if index else "None"
        (versions / f"gen_{index:03d}.py").write_text(REVISION.format(index=index, down=down))
    return folder / "alembic.ini"


def fresh_database(server: EphemeralServer) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return make_url(server.url).set(database=name).render_as_string(hide_password=False)


def median(action: Callable[[], float]) -> float:
    return statistics.median(action() for _ in range(ROUNDS))


class Lifecycle:
    """``scratch_database`` that adds the time spent creating, connecting and dropping."""

    def __init__(self) -> None:
        self.spent = 0.0

    @contextmanager
    def __call__(self, server_url: str) -> Iterator[Connection]:
        started = time.perf_counter()
        with scratch_database(server_url) as connection:
            self.spent += time.perf_counter() - started
            yield connection
            started = time.perf_counter()
        self.spent += time.perf_counter() - started


def upgrade_head(server: EphemeralServer, alembic_ini: Path) -> tuple[float, float]:
    """Seconds in all, and outside the database lifecycle."""
    lifecycle = Lifecycle()
    started = time.perf_counter()
    project = AlembicProject(alembic_ini)
    with lifecycle(server.url) as connection:
        project.upgrade(connection, "head")
    elapsed = time.perf_counter() - started
    return elapsed, elapsed - lifecycle.spent


def up_and_down(server: EphemeralServer, alembic_ini: Path) -> float:
    """Seconds for `alembic upgrade head` then `alembic downgrade base` on one database: the
    DDL the walk runs, without its fingerprints (context for the ratio, not its baseline)."""
    started = time.perf_counter()
    project = AlembicProject(alembic_ini)
    with scratch_database(server.url) as connection:
        project.upgrade(connection, "head")
        project.downgrade(connection, "base")
    return time.perf_counter() - started


def walk(server: EphemeralServer, alembic_ini: Path) -> tuple[float, float]:
    """Seconds in all, and outside the database lifecycle(s)."""
    lifecycle = Lifecycle()
    history.scratch_database = lifecycle
    try:
        started = time.perf_counter()
        walked = fingerprint_history(AlembicProject(alembic_ini), server.url)
        elapsed = time.perf_counter() - started
    finally:
        history.scratch_database = scratch_database
    assert len(walked.fingerprints) == len(walked.order)
    return elapsed, elapsed - lifecycle.spent


def live_200_tables(server: EphemeralServer) -> float:
    engine = create_engine(fresh_database(server))
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE parent (id bigint PRIMARY KEY)"))
        for index in range(199):
            connection.execute(
                text(
                    f"CREATE TABLE t_{index} (id bigint GENERATED BY DEFAULT AS IDENTITY "
                    "PRIMARY KEY, parent_id bigint REFERENCES parent (id), name text NOT NULL "
                    "DEFAULT 'x', amount numeric(18,2), created timestamptz DEFAULT now(), "
                    f"UNIQUE (parent_id, name)); CREATE INDEX ix_t_{index} ON t_{index} (name)"
                )
            )
    with engine.connect() as connection:
        connection.execute(text("SET TRANSACTION READ ONLY"))
        started = time.perf_counter()
        objects = len(fingerprint(connection).objects)
        elapsed = time.perf_counter() - started
    engine.dispose()
    assert objects > 2000, objects
    return elapsed


def main() -> None:
    with start_ephemeral(EphemeralSettings(provider="local")) as server:
        with tempfile.TemporaryDirectory() as folder:
            histories = {
                "reference chain (3 revisions)": REPO / "examples/reference_backend/alembic.ini",
                "generated history (100 revisions)": generated_project(Path(folder), 100),
            }
            for ini in histories.values():  # warm-up: bytecode caches, server buffers
                upgrade_head(server, ini)
                walk(server, ini)
            for name, ini in histories.items():
                rounds = [
                    (upgrade_head(server, ini), walk(server, ini), up_and_down(server, ini))
                    for _ in range(ROUNDS)
                ]
                base, base_inner = (statistics.median(b[i] for b, _, _ in rounds) for i in (0, 1))
                cand, cand_inner = (statistics.median(c[i] for _, c, _ in rounds) for i in (0, 1))
                both = statistics.median(d for _, _, d in rounds)
                print(
                    f"{name}: upgrade head {base:.3f}s, fingerprint every revision {cand:.3f}s, "
                    f"ratio {cand / base:.2f} (budget <= 2); without the database lifecycle "
                    f"{base_inner:.3f}s vs {cand_inner:.3f}s, ratio {cand_inner / base_inner:.2f}; "
                    f"context: upgrade head + downgrade base {both:.3f}s, walk / that "
                    f"{cand / both:.2f}"
                )
        live = median(lambda: live_200_tables(server))
        print(f"fingerprint of a live 200-table schema: {live:.3f}s (budget < 1 s)")


if __name__ == "__main__":
    main()
