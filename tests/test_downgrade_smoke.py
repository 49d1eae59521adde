"""Step 1.4's downgrade/upgrade smoke and OPS-02's release downgrades, called directly on a real
Postgres: each judged with the schema fingerprint (checks/fingerprint.py), passing as shipped
and failing on a seeded fault with the object that proves it.

The pre-flights in front of the smoke (the walk's proven downgrades) stop most such faults
before it runs on staging; here the checks themselves are attacked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.forensics.history import scratch_database
from pytest_ledger_rollout.checks.migrations import (
    AlembicProject,
    check_downgrade_upgrade_smoke,
    check_release_downgrades,
)
from pytest_ledger_rollout.checks.schema import UniqueSpec
from pytest_ledger_rollout.results import CheckResult
from pytest_ledger_rollout.targets.postgres import EphemeralServer

from .support import CHAIN, HEAD, ScenarioDb

RECON_UNIQUE = UniqueSpec(
    "reconciliation_findings", ("provider", "provider_event_id", "finding_type")
)
CONSTRAINT = "reconciliation_findings.uq_recon_provider_event_type"
DROP = "op.drop_constraint('uq_recon_provider_event_type', 'reconciliation_findings', 'unique')"
# A downgrade that undoes nothing: only alembic_version moves.
UNDOES_NOTHING = "    op.execute('SELECT 1')\n"
# A downgrade that undoes the head and leaves an enum type behind, which the upgrade does not
# remove: the schema back at head is not the head schema.
LEAVES_AN_ENUM = f"    {DROP}\n    op.execute(\"CREATE TYPE finding_state AS ENUM ('open')\")\n"


def head_downgrade(backend_copy: Path, body: str) -> AlembicProject:
    head_file = backend_copy / "migrations" / "versions" / f"{HEAD}.py"
    source = head_file.read_text()
    head_file.write_text(
        source.split("def downgrade() -> None:")[0] + f"def downgrade() -> None:\n{body}"
    )
    return AlembicProject(backend_copy / "alembic.ini")


def failure_text(result: CheckResult) -> str:
    assert result.failure is not None, result.summary
    f = result.failure
    return "\n".join((f.title, f.expected, f.seen, f.remedy))


def evidence_text(result: CheckResult) -> str:
    return "\n".join(e.body for e in result.evidence)


@pytest.fixture
def at_head(scenario_db: ScenarioDb) -> Iterator[Connection]:
    scenario_db.upgrade()
    with scenario_db.engine.connect() as connection:
        yield connection


@pytest.fixture
def scratch(pg_server: EphemeralServer) -> Iterator[Connection]:
    with scratch_database(pg_server.url) as connection:
        yield connection


# --- step 1.4: downgrade -1, upgrade head ---------------------------------------------------


def test_smoke_passes_and_names_what_the_downgrade_undid(
    at_head: Connection, backend_copy: Path
) -> None:
    project = AlembicProject(backend_copy / "alembic.ini")
    result = check_downgrade_upgrade_smoke(project, at_head, (RECON_UNIQUE,))
    assert result.ok, failure_text(result)
    assert result.summary == f"{HEAD} -> {CHAIN[1]} -> {HEAD}; undone: 2 object(s)"
    steps = evidence_text(result)
    assert f"alembic downgrade -1: current = {CHAIN[1]}; 2 difference(s) from the schema" in steps
    assert (
        f"  missing constraint {CONSTRAINT}: UNIQUE (provider, provider_event_id, finding_type)"
    ) in steps
    assert "  missing index uq_recon_provider_event_type: CREATE UNIQUE INDEX" in steps
    assert f"alembic upgrade head: current = {HEAD}; schema equal to the schema at head" in steps
    assert project.current(at_head) == (HEAD,)


def test_smoke_fails_when_the_downgrade_changes_no_schema_object(
    at_head: Connection, backend_copy: Path
) -> None:
    project = head_downgrade(backend_copy, UNDOES_NOTHING)
    result = check_downgrade_upgrade_smoke(project, at_head, (RECON_UNIQUE,))
    text_ = failure_text(result)
    assert text_.startswith("`alembic downgrade -1` changed no schema object")
    assert "the schema after the downgrade equals the schema at head (" in text_
    assert f"Fix the downgrade() of {HEAD}" in text_
    steps = evidence_text(result)
    assert f"current = {CHAIN[1]}; schema equal to the schema at head" in steps
    assert "UNIQUE (provider, provider_event_id, finding_type) on reconciliation_findings: " in (
        steps
    )


def test_smoke_fails_when_the_upgrade_does_not_restore_the_head_schema(
    at_head: Connection, backend_copy: Path
) -> None:
    project = head_downgrade(backend_copy, LEAVES_AN_ENUM)
    result = check_downgrade_upgrade_smoke(project, at_head, (RECON_UNIQUE,))
    text_ = failure_text(result)
    assert text_.startswith(
        "`alembic upgrade head` after the downgrade did not restore the head schema"
    )
    assert f"current = {HEAD}; 1 difference(s) from the schema at head" in text_
    assert "extra enum finding_state: ENUM ('open')" in text_
    # The downgrade itself is listed object by object, the enum it added among them.
    steps = evidence_text(result)
    assert f"  missing constraint {CONSTRAINT}: UNIQUE (" in steps
    assert "  extra enum finding_state: ENUM ('open')" in steps


# --- OPS-02: every revision of the release downgrades, on a throwaway database --------------


def test_release_downgrades_pass_as_shipped(scratch: Connection) -> None:
    project = AlembicProject(
        Path(__file__).resolve().parents[1] / "examples" / "reference_backend" / "alembic.ini"
    )
    result = check_release_downgrades(project, scratch, CHAIN[1:])
    assert result.ok, failure_text(result)
    steps = evidence_text(result)
    assert f"downgrade {HEAD} -> {CHAIN[1]}: 2 change(s)" in steps
    assert f"downgrade {CHAIN[1]} -> {CHAIN[0]}: " in steps
    assert f"upgrade head -> {HEAD}: 0 difference(s) from the head schema" in steps


def test_release_downgrade_that_changes_nothing_is_named(
    scratch: Connection, backend_copy: Path
) -> None:
    project = head_downgrade(backend_copy, UNDOES_NOTHING)
    result = check_release_downgrades(project, scratch, CHAIN[1:])
    text_ = failure_text(result)
    assert text_.startswith(f"The release cannot be rolled back past {HEAD}")
    assert f"the downgrade of {HEAD} changed no schema object" in text_
    assert f"downgrade {HEAD} -> {CHAIN[1]}: 0 change(s)" in evidence_text(result)


def test_release_upgrade_back_that_does_not_restore_head_is_named(
    scratch: Connection, backend_copy: Path
) -> None:
    project = head_downgrade(backend_copy, LEAVES_AN_ENUM)
    result = check_release_downgrades(project, scratch, CHAIN[1:])
    text_ = failure_text(result)
    assert text_.startswith(f"The release cannot be rolled back past {HEAD}")
    assert "the upgrade back did not restore the head schema" in text_
    steps = evidence_text(result)
    assert f"upgrade head -> {HEAD}: 1 difference(s) from the head schema" in steps
    assert "  extra enum finding_state: ENUM ('open')" in steps
