"""Migration forensics on a real Postgres: each finding in a scenario built for it, both ways."""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.fingerprint import Fingerprint, SchemaLog, fingerprint
from pytest_ledger_rollout.checks.forensics.history import (
    DowngradeProof,
    History,
    fingerprint_history,
    scratch_database,
)
from pytest_ledger_rollout.checks.forensics.preflight import (
    ForensicsConfig,
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
    load_snapshot,
    save_snapshot,
)
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.checks.schema import UniqueSpec
from pytest_ledger_rollout.config import ConfigError, load_config
from pytest_ledger_rollout.results import CheckResult, DodFailure
from pytest_ledger_rollout.targets.postgres import EphemeralServer

from .conftest import database_url
from .support import CHAIN, HEAD, REFERENCE_BACKEND, RunPhase, ScenarioDb, write_config

PROJECTS = Path(__file__).parent / "projects"
REFERENCE = AlembicProject(REFERENCE_BACKEND / "alembic.ini")
BRANCHY = AlembicProject(PROJECTS / "branchy" / "alembic.ini")
HAZARDS = AlembicProject(PROJECTS / "hazards" / "alembic.ini")
RECON_UNIQUE = UniqueSpec(
    "reconciliation_findings", ("provider", "provider_event_id", "finding_type")
)


def failure_text(result: CheckResult) -> str:
    assert result.failure is not None, result.summary
    f = result.failure
    return "\n".join((f.title, f.expected, f.seen, f.remedy))


@pytest.fixture(scope="session")
def reference_history(pg_server: EphemeralServer) -> History:
    return fingerprint_history(REFERENCE, pg_server.url)


@pytest.fixture(scope="session")
def branchy_history(pg_server: EphemeralServer) -> History:
    return fingerprint_history(BRANCHY, pg_server.url)


@pytest.fixture
def empty_db(admin_engine: Engine, pg_server: EphemeralServer) -> Iterator[Engine]:
    """A new, empty database for a project other than the reference backend."""
    name = f"forensics_{uuid.uuid4().hex[:10]}"
    with admin_engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine = create_engine(database_url(pg_server.url, name))
    yield engine
    engine.dispose()
    with admin_engine.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


# --- fingerprints of every revision ---------------------------------------------------------


def test_branch_and_merge_history_is_walked_revision_by_revision(branchy_history: History) -> None:
    fps = branchy_history.fingerprints
    assert set(fps) == {"b1_accounts", "b2a_email", "b2b_audit", "b3_merge", "b4_status"}
    names = {rev: {o.name for o in fp.objects} for rev, fp in fps.items()}
    # Each side of the branch without the other; the merge has both; then the enum + sequence.
    assert "accounts.email" in names["b2a_email"] and "audit_log" not in names["b2a_email"]
    assert "audit_log" in names["b2b_audit"] and "accounts.email" not in names["b2b_audit"]
    assert names["b3_merge"] == names["b2a_email"] | names["b2b_audit"]
    kinds = {(o.kind, o.name): o.definition for o in fps["b4_status"].objects}
    assert kinds[("enum", "account_status")] == "ENUM ('active', 'closed')"
    assert kinds[("sequence", "invoice_numbers")].startswith("bigint START 1000")
    assert "DEFAULT 'active'::account_status" in kinds[("column", "accounts.status")]


def test_branch_state_between_heads_matches_its_revision(
    empty_db: Engine, branchy_history: History
) -> None:
    with empty_db.connect() as connection:
        BRANCHY.upgrade(connection, "b2b_audit")
        connection.execute(text("UPDATE alembic_version SET version_num = 'b1_accounts'"))
        connection.commit()
        state = read_state(
            branchy_history, fingerprint(connection), BRANCHY.current(connection), ()
        )
    assert state.matched == ("b2b_audit",)
    text_ = failure_text(check_schema_state(state, "staging"))
    assert "`alembic stamp b2b_audit` then `alembic upgrade head`" in text_


# A generated linear history: one revision per entry, each running its statements in order.
REVISION = """
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in {statements!r}:
        op.execute(statement)


def downgrade() -> None:
    pass
"""

# DDL whose effect reaches objects it does not name: renames seen in foreign keys, views,
# defaults and column types, moves between schemas, a schema rename, a search_path that hides a
# table, a command the DDL log does not follow (full read), partitions, cascading drops.
TRICKY = (
    (
        "CREATE TABLE parent (id serial PRIMARY KEY, code text UNIQUE)",
        "CREATE TABLE child (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " parent_id int REFERENCES parent (id), note text CHECK (note <> ''))",
    ),
    (
        "CREATE TYPE mood AS ENUM ('sad')",
        "ALTER TABLE child ADD COLUMN mood mood DEFAULT 'sad'",
        "CREATE VIEW child_view AS SELECT c.id, p.code, c.mood FROM child c"
        " JOIN parent p ON p.id = c.parent_id",
    ),
    ("ALTER TABLE parent RENAME TO mother", "ALTER TABLE mother RENAME COLUMN code TO label"),
    ("ALTER TYPE mood ADD VALUE 'happy'", "ALTER TYPE mood RENAME TO feeling"),
    (
        "ALTER INDEX parent_pkey RENAME TO mother_pk",
        "ALTER SEQUENCE parent_id_seq RENAME TO mother_ids",
    ),
    (
        "CREATE SCHEMA side",
        "CREATE TABLE side.mother (id int)",
        "SET search_path = side, public",
    ),
    (
        "CREATE SCHEMA archive",
        "ALTER TABLE public.child SET SCHEMA archive",
        "ALTER SCHEMA archive RENAME TO attic",
    ),
    (
        "CREATE TEXT SEARCH CONFIGURATION plain (COPY = simple)",
        "CREATE TABLE public.docs (id int)",
    ),
    (
        "CREATE TABLE public.p (id int, at date) PARTITION BY RANGE (at)",
        "CREATE TABLE public.p_2024 PARTITION OF public.p"
        " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        "ALTER TABLE public.p ADD PRIMARY KEY (id, at)",
    ),
    (
        "ALTER TABLE attic.child ALTER COLUMN note TYPE varchar(40)",
        "ALTER TABLE attic.child DROP CONSTRAINT child_note_check",
    ),
    ("DROP TABLE public.mother CASCADE",),
    ("DROP TYPE public.feeling CASCADE", "ALTER TABLE public.p DROP CONSTRAINT p_pkey"),
    ("DROP SCHEMA attic CASCADE", 'SET search_path = "$user", public'),
)


def write_history(folder: Path, revisions: Sequence[Sequence[str]]) -> AlembicProject:
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    shutil.copy(PROJECTS / "branchy" / "migrations" / "env.py", folder / "migrations" / "env.py")
    (folder / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = os\n"
        "sqlalchemy.url = postgresql+psycopg://localhost/unused\n"
    )
    for index, statements in enumerate(revisions):
        down = f"r{index - 1:03d}" if index else None
        source = REVISION.format(revision=f"r{index:03d}", down=down, statements=statements)
        (versions / f"r{index:03d}.py").write_text(source)
    return AlembicProject(folder / "alembic.ini")


def generated(count: int) -> list[tuple[str, ...]]:
    """Revisions like the benchmark's: a table with an identity and a default, and an index."""
    return [
        (
            f"CREATE TABLE t_{i:03d} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
            " name text NOT NULL DEFAULT 'x', amount numeric(18,2))",
            f"CREATE INDEX ix_t_{i:03d}_name ON t_{i:03d} (name)",
        )
        for i in range(count)
    ]


@pytest.fixture
def checked_reads(monkeypatch: pytest.MonkeyPatch) -> list[Fingerprint]:
    """Every step-by-step read of a walk, checked against a full read on the same connection."""
    reads: list[Fingerprint] = []
    read = SchemaLog.read

    def checked(self: SchemaLog, connection: Connection) -> Fingerprint:
        incremental = read(self, connection)
        full = fingerprint(connection)
        assert incremental == full, incremental.differences(full) or "owners differ"
        reads.append(incremental)
        return incremental

    monkeypatch.setattr(SchemaLog, "read", checked)
    return reads


def full_reads(
    project: AlembicProject, server_url: str, revisions: Sequence[str]
) -> dict[str, Fingerprint]:
    """Each revision's fingerprint the slow way: its own database, upgraded to it, read whole."""
    found = {}
    for revision in revisions:
        with scratch_database(server_url) as connection:
            project.upgrade(connection, revision)
            found[revision] = fingerprint(connection)
    return found


@pytest.mark.parametrize("history", ["reference", "branchy", "tricky", "generated"])
def test_step_by_step_fingerprints_equal_full_catalog_reads(
    history: str, pg_server: EphemeralServer, checked_reads: list[Fingerprint], tmp_path: Path
) -> None:
    project = {
        "reference": lambda: REFERENCE,
        "branchy": lambda: BRANCHY,
        "tricky": lambda: write_history(tmp_path, TRICKY),
        "generated": lambda: write_history(tmp_path, generated(100)),
    }[history]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to full reads
        walked = fingerprint_history(project, pg_server.url)
    assert set(walked.fingerprints) == set(walked.order)
    # The walk read step by step: after each revision (branchy: b2b_audit again on a fresh
    # database), and once more to confirm the last step (tricky, generated: it is recorded).
    assert len(checked_reads) >= len(walked.order)
    if history != "generated":  # 100 databases: the step-by-step check above covers it
        assert walked.fingerprints == full_reads(project, pg_server.url, walked.order)


def test_ddl_on_a_connection_of_its_own_falls_back_to_full_reads(
    pg_server: EphemeralServer, tmp_path: Path
) -> None:
    write_history(tmp_path, [("CREATE TABLE first (id int)",), ("SELECT 1",)])
    # The second revision creates a table in a session the DDL log does not see.
    revision = tmp_path / "migrations" / "versions" / "r001.py"
    revision.write_text(
        revision.read_text()
        .replace(
            "        op.execute(statement)",
            "        url = op.get_bind().engine.url.render_as_string(hide_password=False)\n"
            "        engine = sa.create_engine(url)\n"
            "        with engine.begin() as aside:\n"
            "            aside.execute(sa.text('CREATE TABLE aside (id int)'))\n"
            "        engine.dispose()",
        )
        .replace("from alembic import op", "import sqlalchemy as sa\nfrom alembic import op")
    )
    project = AlembicProject(tmp_path / "alembic.ini")
    with pytest.warns(UserWarning, match="differ from a full catalog read after `upgrade heads`"):
        walked = fingerprint_history(project, pg_server.url)
    assert walked.fingerprints == full_reads(project, pg_server.url, walked.order)
    assert "aside" in {o.name for o in walked.fingerprints["r001"].objects}


# --- which revision does the schema match -----------------------------------------------------


@pytest.mark.parametrize("revision", CHAIN[1:])
def test_objects_created_outside_alembic_name_the_revision_to_stamp(
    scenario_db: ScenarioDb, reference_history: History, revision: str
) -> None:
    scenario_db.upgrade(revision)  # the objects exist ...
    scenario_db.execute(f"UPDATE alembic_version SET version_num = '{CHAIN[0]}'")  # ... unrecorded
    with scenario_db.engine.connect() as connection:
        state = read_state(
            reference_history, fingerprint(connection), REFERENCE.current(connection), ()
        )
    assert state.matched == (revision,)
    assert state.claimed == (CHAIN[0],)
    staging = check_schema_state(state, "staging")
    assert f"The schema matches revision {revision}, but alembic_version says {CHAIN[0]}" in (
        failure_text(staging)
    )
    assert f"`alembic stamp {revision}` then `alembic upgrade head`" in failure_text(staging)
    assert "0 differences" in failure_text(staging)
    assert staging.facts["schema matches revision (before the upgrade)"] == revision
    table = next(e for e in staging.evidence if e.table)
    assert "extra\ttable\treconciliation_findings" in table.body
    production = failure_text(check_schema_state(state, "production"))
    assert "never stamped or reset" in production and "alembic stamp" not in production


def test_schema_as_claimed_passes_and_a_stray_table_matches_nothing(
    scenario_db: ScenarioDb, reference_history: History
) -> None:
    with scenario_db.engine.connect() as connection:
        state = read_state(reference_history, fingerprint(connection), (CHAIN[0],), ())
        assert check_schema_state(state, "staging").ok
        scenario_db.execute("CREATE TABLE reconciliation_findings (id bigint)")
        state = read_state(reference_history, fingerprint(connection), (CHAIN[0],), ())
    text_ = failure_text(check_schema_state(state, "staging"))
    assert f"The schema matches no revision (nearest: {CHAIN[0]})" in text_
    assert "extra column reconciliation_findings.id: bigint" in text_
    assert "No revision can be stamped safely" in text_


def test_fingerprint_reads_in_a_read_only_session(scenario_db: ScenarioDb) -> None:
    with scenario_db.engine.connect() as connection:
        connection.execute(text("SET TRANSACTION READ ONLY"))
        assert len(fingerprint(connection).objects) > 50


# --- drift at head --------------------------------------------------------------------------


def test_hand_made_changes_at_head_are_listed(
    scenario_db: ScenarioDb, reference_history: History
) -> None:
    scenario_db.upgrade("head")
    with scenario_db.engine.connect() as connection:
        assert check_drift_at_head(reference_history, fingerprint(connection), (HEAD,), ()).ok
    scenario_db.execute(
        "CREATE INDEX ix_by_hand ON ledger_entries (reference)",
        "ALTER TABLE reconciliation_findings ALTER COLUMN provider TYPE varchar(64)",
    )
    with scenario_db.engine.connect() as connection:
        live = fingerprint(connection)
    drift = check_drift_at_head(reference_history, live, (HEAD,), ())
    text_ = failure_text(drift)
    assert "2 schema difference(s) from head" in text_
    assert "extra index ix_by_hand: CREATE INDEX ix_by_hand ON public.ledger_entries" in text_
    assert (
        "changed column reconciliation_findings.provider: text NOT NULL -> "
        "character varying(64) NOT NULL" in text_
    )
    # Objects of tables another service owns are left out.
    ignored = check_drift_at_head(
        reference_history, live, (HEAD,), ("ledger_*", "reconciliation_findings")
    )
    assert ignored.ok, ignored.failure


# --- pre-flight -----------------------------------------------------------------------------


def test_version_table_too_narrow_for_pending_ids(scenario_db: ScenarioDb) -> None:
    with scenario_db.engine.connect() as connection:
        assert check_version_width(connection, read_pending(REFERENCE, connection)).ok
    scenario_db.execute("ALTER TABLE alembic_version ALTER COLUMN version_num TYPE varchar(32)")
    with scenario_db.engine.connect() as connection:
        result = check_version_width(connection, read_pending(REFERENCE, connection))
    text_ = failure_text(result)
    assert "2 pending revision id(s) do not fit alembic_version.version_num" in text_
    assert f"{CHAIN[1]}: 35 characters > 32" in text_ and f"{HEAD}: 46 characters > 32" in text_
    assert "ALTER TABLE alembic_version ALTER COLUMN version_num TYPE VARCHAR(128);" in text_
    assert 'op.alter_column("alembic_version", "version_num"' in text_


def test_duplicates_that_would_break_the_unique_constraint(scenario_db: ScenarioDb) -> None:
    scenario_db.upgrade(CHAIN[1])
    insert = (
        "INSERT INTO reconciliation_findings (provider, provider_event_id, finding_type) "
        "VALUES ('psp', 'evt-1', 'missing'), ('psp', 'evt-2', 'missing'), ('psp', 'evt-3', 'x')"
    )
    scenario_db.execute(insert)
    with scenario_db.engine.connect() as connection:
        assert check_unique_preflight(connection, RECON_UNIQUE, 10).ok
    scenario_db.execute(
        insert,
        insert,
        "INSERT INTO reconciliation_findings"
        " (provider, provider_event_id, finding_type) VALUES ('psp', 'evt-1', 'missing')",
    )
    with scenario_db.engine.connect() as connection:
        result = check_unique_preflight(connection, RECON_UNIQUE, 2)
    text_ = failure_text(result)
    assert "3 duplicate group(s) would make the UNIQUE on reconciliation_findings fail" in text_
    # The worst group first, and only as many as asked for (keys, no other column).
    assert "the worst 2:\n4 rows: provider='psp', provider_event_id='evt-1'" in text_
    assert "evt-3" not in text_.split("the worst 2:")[1]


def test_non_concurrent_index_on_a_large_table(empty_db: Engine) -> None:
    with empty_db.connect() as connection:
        HAZARDS.upgrade(connection, "h1_events")
        connection.execute(
            text("INSERT INTO events (kind) SELECT 'k' || g % 7 FROM generate_series(1, 3000) g")
        )
        connection.commit()
        connection.execute(text("ANALYZE events"))
        pending = read_pending(HAZARDS, connection)
        small = check_lock_hazards(connection, pending, ForensicsConfig())
        large = check_lock_hazards(connection, pending, ForensicsConfig(large_table_rows=1000))
    assert small.ok, small.failure
    assert "require-concurrent-index-creation" in small.evidence[0].body
    text_ = failure_text(large)
    assert "1 pending statement(s) would hold a long lock on a large table" in text_
    assert "h2_events_kind_idx: [require-concurrent-index-creation] on events (~3000 rows" in text_
    assert "CREATE INDEX ix_events_kind ON events (kind)" in text_
    assert "CONCURRENTLY" in text_


def test_pending_revision_whose_downgrade_is_pass(empty_db: Engine) -> None:
    with empty_db.connect() as connection:
        HAZARDS.upgrade(connection, "h1_events")
        pending = read_pending(HAZARDS, connection)
    assert pending.revisions == ("h2_events_kind_idx", "h3_events_source")
    text_ = failure_text(check_downgrades(HAZARDS, pending.revisions))
    assert "1 pending revision(s) cannot be rolled back" in text_
    assert "h3_events_source: downgrade() is empty (pass)" in text_
    # A merge revision does nothing either way: its empty downgrade is right.
    assert check_downgrades(BRANCHY, ("b3_merge", "b4_status")).ok


@pytest.fixture
def hazards_copy(tmp_path: Path) -> Path:
    """The hazards project (and the branchy env.py it shares) where a test may add revisions."""
    shutil.copytree(PROJECTS / "branchy", tmp_path / "branchy")
    shutil.copytree(PROJECTS / "hazards", tmp_path / "hazards")
    return tmp_path / "hazards"


def add_revision(project: Path, revision: str, down: str, upgrade: str) -> None:
    (project / "versions" / f"{revision}.py").write_text(
        f"import sqlalchemy as sa\nfrom alembic import op\n\nrevision = {revision!r}\n"
        f"down_revision = {down!r}\n\n\ndef upgrade():\n{upgrade}\n\n\n"
        "def downgrade():\n    pass\n"
    )


def test_revision_that_reads_data_is_named_and_the_rest_linted(
    empty_db: Engine, hazards_copy: Path
) -> None:
    # Old failure: `alembic upgrade --sql` of the whole range died with "'NoneType' object has
    # no attribute 'rowcount'", naming no revision and linting nothing.
    add_revision(
        hazards_copy,
        "h4_backfill",
        "h3_events_source",
        "    if op.get_bind().execute(sa.text(\"UPDATE events SET source = 'x'\")).rowcount:\n"
        '        op.execute("ANALYZE events")',
    )
    project = AlembicProject(hazards_copy / "alembic.ini")
    with empty_db.connect() as connection:
        project.upgrade(connection, "h1_events")
        pending = read_pending(project, connection)
        small = check_lock_hazards(connection, pending, ForensicsConfig())
        large = check_lock_hazards(connection, pending, ForensicsConfig(large_table_bytes=1))
    assert pending.revisions == ("h2_events_kind_idx", "h3_events_source", "h4_backfill")
    assert set(pending.sql) == {"h2_events_kind_idx", "h3_events_source"}
    assert "'NoneType' object has no attribute 'rowcount'" in pending.unrendered["h4_backfill"]
    assert small.ok, small.failure
    assert "h4_backfill reads data; its statements were not linted" in small.summary
    # The rest is still linted: a real finding still fails.
    assert "h2_events_kind_idx: [require-concurrent-index-creation]" in failure_text(large)


@pytest.mark.parametrize(
    ("column", "seen"),
    [
        ("sa.Column('tenant', sa.Text)", "tenant (added by h4_tenant) is new and has no default"),
        (
            "sa.Column('tenant', sa.Text, server_default='main', nullable=False)",
            "2 duplicate group(s) would make the UNIQUE on events fail",
        ),
        (
            "sa.Column('tenant', sa.Text, server_default=sa.text('gen_random_uuid()::text'))",
            "could not be checked on today's rows",
        ),
    ],
)
def test_unique_over_a_column_a_pending_revision_adds(
    empty_db: Engine, hazards_copy: Path, column: str, seen: str
) -> None:
    # Old failure: "events lacks column(s) tenant of the UNIQUE to be added ... The table
    # differs from the claimed revision", while the schema was exactly the claimed revision.
    add_revision(
        hazards_copy, "h4_tenant", "h3_events_source", f"    op.add_column('events', {column})"
    )
    project = AlembicProject(hazards_copy / "alembic.ini")
    spec = UniqueSpec("events", ("kind", "tenant"))
    with empty_db.connect() as connection:
        project.upgrade(connection, "h3_events_source")
        connection.execute(
            text("INSERT INTO events (kind) VALUES ('a'), ('a'), ('b'), ('b'), ('c')")
        )
        connection.commit()
        result = check_unique_preflight(connection, spec, 10, read_pending(project, connection))
    assert seen in (result.summary if result.ok else failure_text(result))
    assert result.ok == ("duplicate" not in seen)


def test_downgrades_proven_by_the_walk_both_ways(reference_history: History) -> None:
    assert check_downgrades_proven(reference_history, CHAIN).ok
    broken = dataclasses.replace(
        reference_history,
        downgrades={
            HEAD: DowngradeProof(True, f"downgrade restores {CHAIN[1]}"),
            CHAIN[1]: DowngradeProof(
                False, f"downgrade does not restore {CHAIN[0]}: extra table t"
            ),
        },
    )
    text_ = failure_text(check_downgrades_proven(broken, CHAIN))
    assert "2 upgraded revision(s) do not downgrade to their parent's schema" in text_
    assert f"{CHAIN[0]}: not proven: a downgrade above it failed" in text_
    assert f"Fix the downgrade() of {CHAIN[1]} first" in text_


# --- snapshots and config -------------------------------------------------------------------


def test_snapshot_round_trip_and_stale_snapshot_refused(
    branchy_history: History, tmp_path: Path
) -> None:
    path = tmp_path / "fingerprints.json"
    save_snapshot(branchy_history, path)
    assert load_snapshot(path, BRANCHY) == branchy_history
    copy = tmp_path / "branchy"
    shutil.copytree(PROJECTS / "branchy", copy)
    revision = copy / "migrations" / "versions" / "b2a_email.py"
    revision.write_text(revision.read_text().replace("String(200)", "String(250)"))
    with pytest.raises(StaleSnapshot, match="was taken from other migration scripts"):
        load_snapshot(path, AlembicProject(copy / "alembic.ini"))


def test_a_snapshot_with_downgrades_as_text_is_refused(
    branchy_history: History, tmp_path: Path
) -> None:
    """Format 1 kept each downgrade's verdict as display text, which the check then parsed;
    such a snapshot is refused (regenerate it), never read as proven."""
    path = tmp_path / "fingerprints.json"
    save_snapshot(branchy_history, path)
    data = json.loads(path.read_text())
    data["format"] = 1
    data["downgrades"] = {rev: "downgrade restores base" for rev in data["downgrades"]}
    path.write_text(json.dumps(data))
    with pytest.raises(StaleSnapshot, match="format 1, expected 2"):
        load_snapshot(path, BRANCHY)


def test_forensics_config_keys(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        database="ledger",
        extra='[forensics]\nignore_tables = ["billing_*"]\nsnapshot = "fp.json"\n'
        "large_table_rows = 5000\n",
    )
    forensics = load_config(config).forensics
    assert forensics.ignore_tables == ("billing_*",)
    assert forensics.snapshot == tmp_path / "fp.json"
    assert forensics.large_table_rows == 5000
    config.write_text(config.read_text() + "large_tables = 1\n")
    with pytest.raises(ConfigError, match=r"forensics\.large_tables: unknown key"):
        load_config(config)


# --- in the suite ---------------------------------------------------------------------------


def test_suite_names_the_revision_to_stamp_in_static_html(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    scenario_db.upgrade(CHAIN[1])
    scenario_db.execute(f"UPDATE alembic_version SET version_num = '{CHAIN[0]}'")
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.2")["outcome"] == "failed"
    assert f"The schema matches revision {CHAIN[1]}, but alembic_version says" in run.output
    # The state check is a pre-flight: the upgrade is not attempted, so the remedy it prints
    # (stamp CHAIN[1]) still holds afterwards.
    assert f"`alembic stamp {CHAIN[1]}` then `alembic upgrade head`" in run.output
    upgrade = next(c for c in run.step("1.2")["checks"] if c["check"] == "test_upgrade_head")
    assert upgrade["summary"].startswith("not attempted: preflight")
    assert scenario_db.current() == (CHAIN[0],)
    html = run.artifact(".html").read_text()
    assert "schema matches revision (before the upgrade)</th><td>" + CHAIN[1] in html
    assert "<th>change</th><th>kind</th><th>name</th>" in html
    assert "<td>extra</td><td>table</td><td>reconciliation_findings</td>" in html


def test_base_schema_from_a_sql_file_starts_the_walk(
    tmp_path: Path, pg_server: EphemeralServer
) -> None:
    base = tmp_path / "base.sql"
    # A % in the file is SQL, not a bind parameter.
    base.write_text("CREATE TABLE owners (id bigint); COMMENT ON TABLE owners IS '100%';")
    path = tmp_path / "rollout.toml"
    path.write_text(
        f'[migrations]\nalembic_ini = "{PROJECTS / "hazards" / "alembic.ini"}"\n'
        'expected_chain = ["h3_events_source"]\nbase_schema = "base.sql"\n'
        '[[schema.unique]]\ntable = "events"\ncolumns = ["kind"]\n'
        '[targets.local]\nkind = "ephemeral"\n'
    )
    migrations = load_config(path).migrations
    assert migrations.base_schema == str(base)
    project = AlembicProject(migrations.alembic_ini, migrations.base_schema)
    history = fingerprint_history(project, pg_server.url)
    assert {o.name for o in history.base.objects} == {"owners", "owners.id"}
    assert "owners" in {o.name for o in history.fingerprints["h3_events_source"].objects}
    # A base schema that already has what h1 creates: the history cannot be replayed from it.
    base.write_text("CREATE TABLE events (id bigint);")
    with pytest.raises(DodFailure) as raised:
        fingerprint_history(project, pg_server.url)
    failure = raised.value.failure
    assert failure.title.endswith("revision h1_events fails")
    assert 'relation "events" already exists' in failure.seen
    assert f"Make [migrations] base_schema ({base}) create the schema" in failure.remedy
