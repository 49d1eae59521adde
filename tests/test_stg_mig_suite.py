"""The STG-MIG suite end to end on a real Postgres: the passing path and each seeded fault."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.phases.opened_target import PHASE_LOCK_KEY

from .support import CHAIN, HEAD, RunPhase, ScenarioDb, write_config


def session_config(folder: Path, db: ScenarioDb, **limits: int) -> Path:
    """A staging config for ``db`` with [session] limits, and no app host."""
    session = "".join(f"{key} = {value}\n" for key, value in limits.items())
    return write_config(folder, database=db.name, extra=f"[session]\n{session}")


def test_staging_at_baseline_passes_every_step(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 0, run.output
    data = run.json()
    assert data["verdict"] == "PASS"
    assert data["rehearsal"] is False
    assert [s["outcome"] for s in data["steps"]] == ["passed"] * 4
    assert scenario_db.current() == (HEAD,)
    assert "app on local:// sees 127.0.0.1" in str(run.step("1.1")["evidence"])
    assert re.search(r"VERDICT: stg-mig on staging \(staging\): PASS", run.output)
    assert run.output.rstrip().splitlines()[-1].startswith("ledger-rollout verdict: stg-mig")


def test_two_heads_fail_step_1_1(
    scenario_db: ScenarioDb, tmp_path: Path, backend_copy: Path, run_phase: RunPhase
) -> None:
    (backend_copy / "migrations" / "versions" / "branch_x.py").write_text(
        'revision = "branch_x"\ndown_revision = "20251222_01_reconciliation_findings"\n'
        "branch_labels = None\ndepends_on = None\n\n"
        "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    )
    config = write_config(
        tmp_path,
        database=scenario_db.name,
        alembic_ini=backend_copy / "alembic.ini",
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 1
    assert run.json()["verdict"] == "FAIL"
    assert run.step("1.1")["outcome"] == "failed"
    assert "The migration history has 2 heads" in run.output
    assert "alembic merge -m 'merge heads'" in run.output


def test_chain_differs_from_expected(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    expected = (CHAIN[0], "20251222_01_other_name", CHAIN[2])
    config = write_config(
        tmp_path,
        database=scenario_db.name,
        expected_chain=expected,
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 1
    assert "The history chain ending at head differs from the expected chain" in run.output
    assert "not in the history at all: 20251222_01_other_name" in run.output


def test_missing_constraint_fails_step_1_3(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    scenario_db.upgrade("head")
    scenario_db.execute(
        "ALTER TABLE reconciliation_findings DROP CONSTRAINT uq_recon_provider_event_type"
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.3")["outcome"] == "failed"
    assert "has no UNIQUE constraint over (provider, provider_event_id, finding_type)" in run.output
    assert run.json()["verdict"] == "FAIL"


def test_unique_index_is_not_a_constraint(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    scenario_db.upgrade("head")
    scenario_db.execute(
        "ALTER TABLE reconciliation_findings DROP CONSTRAINT uq_recon_provider_event_type",
        "CREATE UNIQUE INDEX uq_recon_idx ON reconciliation_findings"
        " (provider, provider_event_id, finding_type)",
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.3")["outcome"] == "failed"
    assert "has a unique index, not a UNIQUE constraint" in run.output
    assert (
        "ADD CONSTRAINT uq_recon_provider_event_type UNIQUE USING INDEX uq_recon_idx" in run.output
    )


def test_table_created_outside_alembic_stops_the_upgrade_before_it_runs(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """The schema-state check is a pre-flight: a table made by hand is named, the upgrade is
    not attempted, and alembic_version and the schema stay as they were."""
    scenario_db.execute(
        "CREATE TABLE reconciliation_findings"
        " (id bigint, provider text, provider_event_id text, finding_type text)"
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.2")["outcome"] == "failed"
    checks = {c["check"]: c for c in run.step("1.2")["checks"]}
    assert checks["test_schema_matches_claimed_revision"]["outcome"] == "failed"
    upgrade = checks["test_upgrade_head"]
    assert upgrade["outcome"] == "skipped"
    assert upgrade["summary"] == (
        "not attempted: preflight test_schema_matches_claimed_revision of 1.2 failed"
    )
    assert "extra table reconciliation_findings" in run.output
    assert "alembic_version says abcd1234_ledgertables" in run.output
    assert scenario_db.current() == (CHAIN[0],)
    assert scenario_db.scalar("SELECT to_regclass('ledger_entries') IS NOT NULL") is True
    assert run.step("1.4")["outcome"] == "not run"


def _write_head_downgrade(backend_copy: Path, body: str) -> None:
    head_file = backend_copy / "migrations" / "versions" / f"{HEAD}.py"
    source = head_file.read_text()
    head_file.write_text(
        source.split("def downgrade() -> None:")[0] + f"def downgrade() -> None:\n{body}"
    )


def test_downgrade_that_does_nothing_stops_the_smoke_before_it_runs(
    scenario_db: ScenarioDb, tmp_path: Path, backend_copy: Path, run_phase: RunPhase
) -> None:
    # Not empty (the first pre-flight lets it through), but it undoes nothing: the walk on a
    # throwaway database proves it before the smoke would touch staging.
    _write_head_downgrade(backend_copy, "    op.execute('SELECT 1')\n")
    config = write_config(
        tmp_path,
        database=scenario_db.name,
        alembic_ini=backend_copy / "alembic.ini",
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.2")["outcome"] == "passed"
    smoke = run.step("1.4")
    assert smoke["outcome"] == "failed"
    checks = {c["check"]: c for c in smoke["checks"]}
    proven = checks["test_upgraded_revisions_downgrade_to_their_parents"]
    assert proven["outcome"] == "failed"
    assert HEAD in proven["summary"] or HEAD in str(proven["failure"])
    assert checks["test_downgrade_upgrade_smoke"]["summary"].startswith("not attempted: preflight")
    assert scenario_db.current() == (HEAD,)  # upgraded by 1.2, never downgraded


def test_empty_downgrade_stops_the_smoke_before_it_runs(
    scenario_db: ScenarioDb, tmp_path: Path, backend_copy: Path, run_phase: RunPhase
) -> None:
    _write_head_downgrade(backend_copy, "    pass\n")
    config = write_config(
        tmp_path, database=scenario_db.name, alembic_ini=backend_copy / "alembic.ini"
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    smoke = run.step("1.4")
    assert smoke["outcome"] == "failed"
    assert "downgrade() is empty (pass)" in run.output
    checks = {c["check"]: c for c in smoke["checks"]}
    assert checks["test_downgrade_upgrade_smoke"]["summary"] == (
        "not attempted: preflight test_upgraded_revisions_have_downgrades of 1.4 failed"
    )
    assert scenario_db.current() == (HEAD,)  # upgraded by 1.2, never downgraded


def test_app_that_sees_another_database_fails_1_1(
    scenario_db: ScenarioDb,
    tmp_path: Path,
    backend_copy: Path,
    run_phase: RunPhase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The app's Alembic is configured for another database (the baseline template): its
    # env.py names that URL itself instead of reading $DATABASE_URL.
    env_py = backend_copy / "migrations" / "env.py"
    at_baseline = scenario_db.url.replace(scenario_db.name, "tmpl_baseline")
    env_py.write_text(
        env_py.read_text().replace('os.environ.get("DATABASE_URL", "")', repr(at_baseline))
    )
    config = write_config(tmp_path, database=scenario_db.name, app_dir=backend_copy)
    scenario_db.upgrade("head")
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.1")["outcome"] == "failed"
    assert "The app's Alembic does not see the database the suite checks" in run.output
    assert f"the app's `alembic current` says {CHAIN[0]}" in run.output


def test_wrong_identity_stops_before_touching_the_database(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = write_config(tmp_path, database="ledger_staging")
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 1
    assert "Connected to the wrong database" in run.output
    assert "Nothing was run against this database." in run.output
    assert run.json()["verdict"] == "FAIL"
    assert scenario_db.current() == (CHAIN[0],)
    run.result.assert_outcomes()  # no check ran


def test_stg_mig_on_production_target_is_a_usage_error(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = write_config(tmp_path, database=scenario_db.name, kind="production")
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "phase stg-mig may not run against production target 'staging'" in run.output
    assert scenario_db.current() == (CHAIN[0],)
    assert not run.reports.exists()


def test_held_table_lock_fails_within_lock_timeout(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = session_config(tmp_path, scenario_db, lock_timeout_ms=300, statement_timeout_ms=5000)
    holder = scenario_db.engine.connect()
    holder.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
    try:
        started = time.monotonic()
        run = run_phase(config, "--target=staging", url=scenario_db.url)
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert run.step("1.1")["outcome"] == "failed"
    assert run.step("1.2")["outcome"] == "not run"
    assert run.step("1.2")["evidence"] == "not attempted: 1.1 failed"
    assert "canceling statement due to lock timeout" in run.output
    assert elapsed < 15, f"the run hung behind the lock for {elapsed:.1f}s"


def test_second_run_waits_for_the_phase_lock_then_fails_running_no_check(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = session_config(tmp_path, scenario_db, phase_lock_wait_ms=500)
    other_run = scenario_db.engine.connect()
    other_run.execute(text("SET application_name = 'pytest-ledger-rollout/stg-mig'"))
    other_run.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PHASE_LOCK_KEY})
    other_run.commit()
    try:
        started = time.monotonic()
        run = run_phase(config, "--target=staging", url=scenario_db.url)
        waited = time.monotonic() - started
    finally:
        other_run.close()
    assert run.result.ret == 1
    assert run.json()["verdict"] == "FAIL"
    assert "Another run holds this database's phase lock: no check was run" in run.output
    assert "held by pid" in run.output and "pytest-ledger-rollout/stg-mig" in run.output
    assert waited >= 0.5, f"gave up after {waited:.2f}s without waiting"
    run.result.assert_outcomes()  # no check ran, not even a read
    assert [s["outcome"] for s in run.json()["steps"]] == ["failed", *["not run"] * 3]
    assert scenario_db.current() == (CHAIN[0],)


def test_password_never_reaches_any_artifact(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, admin_engine: Engine
) -> None:
    password = "p@ss:w/rd%?#&'xZq9"
    quoted_sql = password.replace("'", "''")
    with admin_engine.connect() as connection:
        connection.execute(text("DROP ROLE IF EXISTS release_engineer"))
        connection.execute(
            text(f"CREATE ROLE release_engineer LOGIN SUPERUSER PASSWORD '{quoted_sql}'")
        )
    server = make_url(scenario_db.url)
    url = server.set(username="release_engineer", password=password).render_as_string(
        hide_password=False
    )
    # A failing run, so failure text and tracebacks are part of what is checked.
    scenario_db.execute("CREATE TABLE reconciliation_findings (id bigint)")
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", "-rA", url=url)
    assert run.step("1.1")["outcome"] == "passed", run.output
    artifacts = {
        "terminal": run.output,
        "html": run.artifact(".html").read_text(),
        "json": run.artifact(".json").read_text(),
    }
    for name, content in artifacts.items():
        for form in (password, quote(password, safe=""), quote(password)):
            assert form not in content, f"password form {form!r} leaked into the {name}"
        assert "release_engineer:" not in content, f"user info leaked into the {name}"
    assert f"127.0.0.1:{server.port}/{scenario_db.name}" in artifacts["html"]


def test_concurrent_lock_holder_released_lets_the_run_proceed(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """A second run waits: a lock released within the wait is taken, not refused."""
    config = session_config(tmp_path, scenario_db, phase_lock_wait_ms=10000)
    other_run = scenario_db.engine.connect()
    other_run.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PHASE_LOCK_KEY})
    other_run.commit()

    def release() -> None:
        other_run.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PHASE_LOCK_KEY})
        other_run.commit()

    releaser = threading.Timer(2.0, release)
    releaser.start()
    try:
        started = time.monotonic()
        run = run_phase(config, "--target=staging", url=scenario_db.url)
        took = time.monotonic() - started
    finally:
        releaser.join()
        other_run.close()
    assert run.json()["verdict"] == "PASS", run.output
    assert took >= 2.0, "the run went ahead while another held the lock"


def test_failed_preflight_stops_the_upgrade(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """Duplicates that would break the new UNIQUE: the upgrade is refused, not attempted."""
    scenario_db.upgrade(CHAIN[1])
    scenario_db.execute(
        "INSERT INTO reconciliation_findings (provider, provider_event_id, finding_type)"
        " SELECT 'psp', 'evt-1', 'amount_mismatch' FROM generate_series(1, 2)"
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.2")["outcome"] == "failed"
    upgrade = next(c for c in run.step("1.2")["checks"] if c["check"] == "test_upgrade_head")
    assert upgrade["summary"] == (
        "not attempted: preflight test_preflight_unique_holds_on_todays_rows of 1.2 failed"
    )
    assert scenario_db.current() == (CHAIN[1],)


def add_revision(backend: Path, revision: str, down: str, upgrade: str, downgrade: str) -> None:
    (backend / "migrations" / "versions" / f"{revision}.py").write_text(
        f'from alembic import op\n\nrevision = "{revision}"\ndown_revision = "{down}"\n\n\n'
        f"def upgrade():\n{upgrade}\n\n\ndef downgrade():\n{downgrade}\n"
    )


def add_revision_failing_on_rows(
    backend: Path, revision: str, down: str, check: str, db: ScenarioDb
) -> None:
    """A revision that fails on ``db``'s rows only: the walk from an empty database passes, so
    the pre-flights let the upgrade run, and the upgrade's own failure is what is reported."""
    add_revision(
        backend,
        revision,
        down,
        f"    op.execute(\"ALTER TABLE tenants ADD CONSTRAINT {check} CHECK (name <> 'legacy')\")",
        "    pass",
    )
    db.execute("INSERT INTO tenants (id, name) VALUES ('t-legacy', 'legacy')")


def test_concurrent_index_migration_applies_as_under_the_alembic_cli(
    scenario_db: ScenarioDb, tmp_path: Path, backend_copy: Path, run_phase: RunPhase
) -> None:
    # Old failure: `alembic current` autobegan a transaction on the migration connection, and
    # autocommit_block() died on Alembic's `assert self._transaction is not None`.
    add_revision(
        backend_copy,
        "c3_concurrent",
        HEAD,
        "    with op.get_context().autocommit_block():\n"
        '        op.create_index("ix_recon_type", "reconciliation_findings", ["finding_type"],'
        " postgresql_concurrently=True)",
        "    with op.get_context().autocommit_block():\n"
        '        op.drop_index("ix_recon_type", "reconciliation_findings",'
        " postgresql_concurrently=True)",
    )
    config = write_config(
        tmp_path,
        database=scenario_db.name,
        alembic_ini=backend_copy / "alembic.ini",
        expected_chain=(*CHAIN, "c3_concurrent"),
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 0, run.output
    assert f"upgraded {CHAIN[0]} -> c3_concurrent (3 revision(s))" in str(run.step("1.2"))
    assert scenario_db.scalar("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_recon_type'")


def test_database_at_head_has_nothing_to_upgrade(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    # Old summary: "upgraded <head> -> <head>".
    scenario_db.upgrade("head")
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 0, run.output
    assert "already at head: nothing to upgrade" in str(run.step("1.2"))
    assert f"upgraded {HEAD} -> {HEAD}" not in run.output


def test_failing_migration_is_named_with_its_statement_and_error(
    scenario_db: ScenarioDb, tmp_path: Path, backend_copy: Path, run_phase: RunPhase
) -> None:
    # Old failure: "`alembic upgrade head` failed" with the error alone, no revision.
    add_revision_failing_on_rows(backend_copy, "c3_broken", HEAD, "ck_named", scenario_db)
    config = write_config(
        tmp_path,
        database=scenario_db.name,
        alembic_ini=backend_copy / "alembic.ini",
        expected_chain=(*CHAIN, "c3_broken"),
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.2")["outcome"] == "failed"
    assert "`alembic upgrade head` failed in revision c3_broken" in run.output
    assert "statement: ALTER TABLE tenants ADD CONSTRAINT ck_named" in run.output
    assert 'check constraint "ck_named"' in run.output and "is violated by some row" in run.output


def test_hand_made_index_at_head_is_dropped_by_name_not_reset(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    # Old remedy at 1.2: "reset the staging database" for one extra index.
    scenario_db.upgrade("head")
    scenario_db.execute("CREATE INDEX ix_by_hand ON reconciliation_findings (provider)")
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    # Nothing is pending, so the upgrade has nothing to guard: 1.3's drift check names it.
    assert run.step("1.2")["outcome"] == "passed"
    step = str(run.step("1.3"))
    assert run.step("1.3")["outcome"] == "failed"
    assert "DROP INDEX CONCURRENTLY ix_by_hand;" in step
    assert "reset the staging database" not in str(run.json())


def test_downgrade_that_does_not_restore_its_parent_is_named(
    scenario_db: ScenarioDb, tmp_path: Path, backend_copy: Path, run_phase: RunPhase
) -> None:
    middle = backend_copy / "migrations" / "versions" / f"{CHAIN[1]}.py"
    middle.write_text(
        middle.read_text().replace(
            'op.drop_table("reconciliation_findings")',
            'op.drop_index("ix_recon_findings_tenant", "reconciliation_findings")',
        )
    )
    config = write_config(
        tmp_path, database=scenario_db.name, alembic_ini=backend_copy / "alembic.ini"
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.2")["outcome"] == "passed", run.output
    assert run.step("1.4")["outcome"] == "failed"
    assert f"{CHAIN[1]}: downgrade does not restore {CHAIN[0]}: extra " in run.output
    assert f"Fix the downgrade() of {CHAIN[1]} first" in run.output


def test_transaction_per_migration_commits_each_revision_as_the_cli_does(
    scenario_db: ScenarioDb, tmp_path: Path, backend_copy: Path, run_phase: RunPhase
) -> None:
    # Old behaviour: inside the transaction `alembic current` had opened, env.py's
    # transaction_per_migration was ignored and a later failure rolled back every revision.
    env_py = backend_copy / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "context.configure(connection=connection, target_metadata=None)",
            "context.configure(connection=connection, target_metadata=None,"
            " transaction_per_migration=True)",
        )
    )
    add_revision(
        backend_copy, "c3_ok", HEAD, '    op.execute("CREATE TABLE c3 (id int)")', "    pass"
    )
    add_revision_failing_on_rows(backend_copy, "c4_broken", "c3_ok", "ck_c4", scenario_db)
    config = write_config(
        tmp_path,
        database=scenario_db.name,
        alembic_ini=backend_copy / "alembic.ini",
        expected_chain=(*CHAIN, "c3_ok", "c4_broken"),
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert "`alembic upgrade head` failed in revision c4_broken" in run.output
    assert 'check constraint "ck_c4"' in run.output
    assert scenario_db.current() == ("c3_ok",)


def test_no_head_names_the_empty_versions_folder(
    scenario_db: ScenarioDb, tmp_path: Path, backend_copy: Path, run_phase: RunPhase
) -> None:
    # Old remedy: "point it at the backend's alembic.ini", which the config already did.
    for revision in (backend_copy / "migrations" / "versions").glob("*.py"):
        revision.unlink()
    config = write_config(
        tmp_path, database=scenario_db.name, alembic_ini=backend_copy / "alembic.ini"
    )
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.1")["outcome"] == "failed"
    assert "The migration history has no head" in run.output
    assert f"no revision scripts under {backend_copy / 'migrations'}" in run.output
    assert "point it at the backend's alembic.ini" not in run.output


def test_staging_without_an_app_host_does_not_pass_1_1_silently(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """The runbook runs `alembic current` in the pod: a staging target that names no app host
    fails 1.1 and nothing is upgraded; a waiver (run: true) is the honest way past it, and the
    verdict says so."""
    config = write_config(tmp_path, database=scenario_db.name, app_dir=None)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.step("1.1")["outcome"] == "failed"
    assert "The runbook's `alembic current` on the app host was not run" in run.output
    assert 'record the exception as a waiver of step "1.1" (run: true)' in run.output
    assert run.step("1.2")["evidence"] == "not attempted: 1.1 failed"
    assert scenario_db.current() == (CHAIN[0],)
    waivers = tmp_path / "waivers.yml"
    waivers.write_text(
        '"1.1":\n  justification: "INC-7: the pod runs the RC image, checked by hand"\n'
        '  expiration_date: 2099-12-31\n  approver: "j.doe"\n'
    )
    run = run_phase(config, "--target=staging", f"--waivers={waivers}", url=scenario_db.url)
    assert run.result.ret == 0, run.output
    assert run.step("1.1")["outcome"] == "waived"
    assert "stg-mig on staging (staging): PASS (waived: 1.1)" in run.output
    assert scenario_db.current() == (HEAD,)
