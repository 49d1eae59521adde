"""Production stays read-only against its own config SQL, on a role that could write.

The test server's role is a superuser: every guard below is what stops the write, not the
role. Each attack is run past the config check too, so the session itself is proven."""

from __future__ import annotations

import uuid
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from pytest_ledger_rollout.checks.flags import SQL, FlagSourceConfig, read_flags
from pytest_ledger_rollout.config import ConfigError, load_config
from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.phases import opened_target
from pytest_ledger_rollout.phases.model import PHASES
from pytest_ledger_rollout.phases.opened_target import (
    TargetRefused,
    open_target,
    resolve_target,
    write_guarded_tables,
)
from pytest_ledger_rollout.targets.connection import (
    ReadOnlyViolation,
    SessionLimits,
    assert_read_only,
    check_role_privileges,
    open_engine,
)

from .support import REPO, RunPhase, ScenarioDb, write_config

LIMITS = SessionLimits(statement_timeout_ms=5000, lock_timeout_ms=1000)
FLAGS = "SELECT key, tenant_id AS tenant, enabled, changed_at FROM feature_flags"
ATTACKS = {
    "commit then read write": (
        f"{FLAGS}; COMMIT; BEGIN READ WRITE; DELETE FROM ledger_entries; COMMIT"
    ),
    "lift the session default": (
        f"{FLAGS}; SET default_transaction_read_only = off; COMMIT; "
        "UPDATE wallets SET balance = balance + 1000"
    ),
    "set_config in a select": (
        "SELECT set_config('default_transaction_read_only', 'off', false) AS key, "
        "NULL AS tenant, true AS enabled, NULL AS changed_at"
    ),
    "single commit": "COMMIT",
    "session characteristics": "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "start a transaction": "START TRANSACTION READ WRITE",
    "savepoint": "SAVEPOINT s",
    "reset": "RESET default_transaction_read_only",
}
STATE = (
    "SELECT (SELECT count(*) FROM ledger_entries), (SELECT coalesce(sum(balance), 0) FROM wallets),"
    " (SELECT count(*) FROM feature_flags)"
)


@pytest.fixture
def seeded(scenario_db: ScenarioDb) -> ScenarioDb:
    scenario_db.execute(
        "INSERT INTO tenants (id, name) VALUES ('t-1', 'one')",
        "INSERT INTO wallets (tenant_id, owner_ref, balance) VALUES ('t-1', 'o-1', 50)",
        "INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type)"
        " SELECT id, tenant_id, 50, 'opening_balance' FROM wallets",
        "INSERT INTO feature_flags (key, enabled) VALUES ('ledger_shadow_write', true)",
    )
    return scenario_db


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_config_sql_that_could_lift_read_only_is_a_usage_error(tmp_path: Path, attack: str) -> None:
    path = write_config(tmp_path, database="x", extra=f"[flags]\nquery = '''{attack}'''\n")
    with pytest.raises(ConfigError, match=r"flags\.query: .*no transaction control or SET"):
        load_config(path)


def test_a_single_read_query_with_semicolons_in_literals_is_accepted(tmp_path: Path) -> None:
    query = "SELECT key, ';' AS note, tenant_id AS tenant FROM feature_flags -- ; COMMIT"
    path = write_config(tmp_path, database="x", extra=f'[flags]\nquery = "{query}"\n')
    assert load_config(path).flags.source.query == query


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_no_row_changes_whatever_the_flag_query(seeded: ScenarioDb, attack: str) -> None:
    before = _state(seeded)
    engine = open_engine(seeded.url, "production", "prd-pilot", LIMITS)
    try:
        with (
            engine.connect() as connection,
            suppress(SQLAlchemyError, ValueError, ReadOnlyViolation),
        ):
            read_flags(FlagSourceConfig(SQL, query=attack), connection)
        # The next transaction on the same pooled session must still be read-only.
        with engine.connect() as connection, pytest.raises(DBAPIError, match="read-only"):
            connection.execute(text("DELETE FROM ledger_entries"))
    finally:
        engine.dispose()
    assert _state(seeded) == before


def test_one_statement_per_call_even_without_parameters(seeded: ScenarioDb) -> None:
    engine = open_engine(seeded.url, "production", "prd-pilot", LIMITS)
    with engine.connect() as connection, pytest.raises(DBAPIError, match="multiple commands"):
        connection.exec_driver_sql("SELECT 1; SELECT 2")
    engine.dispose()


def test_each_transaction_is_opened_read_only_whatever_the_session_default(
    seeded: ScenarioDb,
) -> None:
    """A session default lifted by a statement the plugin itself sent does not make the next
    transaction writable: the plugin opens each one READ ONLY."""
    before = _state(seeded)
    engine = open_engine(seeded.url, "production", "prd-pilot", LIMITS)
    with engine.connect() as connection:
        connection.exec_driver_sql("SET default_transaction_read_only = off")
        connection.commit()
        with pytest.raises(DBAPIError, match="read-only transaction"):
            connection.execute(text("DELETE FROM ledger_entries"))
    engine.dispose()
    assert _state(seeded) == before


def test_a_transaction_that_is_not_read_only_is_refused(seeded: ScenarioDb) -> None:
    engine = open_engine(seeded.url, "staging", "stg-roll", LIMITS)
    with engine.connect() as connection, pytest.raises(ReadOnlyViolation, match="not read-only"):
        assert_read_only(connection)
    engine.dispose()


def test_a_production_session_that_is_not_read_only_is_refused_before_any_check(
    seeded: ScenarioDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the read-only setup ever regressed, the session would still not be handed out."""
    path = write_config(tmp_path, database=seeded.name, kind="production")
    config = load_config(path)
    phase = PHASES["prd-pilot"]
    target = resolve_target(config, phase, "staging", {"DATABASE_URL": seeded.url})

    def writable(url: str, kind: str, phase: str, limits: SessionLimits) -> Engine:
        return open_engine(url, "staging", phase, limits)

    monkeypatch.setattr(opened_target, "open_engine", writable)
    with ExitStack() as stack, pytest.raises(TargetRefused, match="not read-only"):
        open_target(config, target, phase, Scrubber(), stack)


TABLES = write_guarded_tables(load_config(REPO / "rollout.toml"))


def test_role_privileges_report_a_role_that_can_write(seeded: ScenarioDb) -> None:
    engine = open_engine(seeded.url, "production", "prd-pilot", LIMITS)
    with engine.connect() as connection:
        result = check_role_privileges(connection, (*TABLES, "no_such_table"))
    engine.dispose()
    assert result.failure is not None
    assert "can write to production tables" in result.failure.title
    assert "ledger_entries: INSERT, UPDATE, DELETE, TRUNCATE" in result.failure.seen
    assert "not found (not checked): no_such_table" in result.evidence[0].body


def test_role_privileges_pass_for_a_select_only_role(seeded: ScenarioDb) -> None:
    role = f"ro_{uuid.uuid4().hex[:8]}"
    seeded.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD 'ro-pass'",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
    )
    url = make_url(seeded.url).set(username=role, password="ro-pass")
    engine = open_engine(url.render_as_string(False), "production", "prd-pilot", LIMITS)
    try:
        with engine.connect() as connection:
            result = check_role_privileges(connection, TABLES)
    finally:
        engine.dispose()
        seeded.execute(f"DROP OWNED BY {role}", f"DROP ROLE {role}")
    assert result.ok, result.failure
    assert result.summary == f"role {role} cannot write to wallets, ledger_entries, feature_flags"


def test_require_read_only_role_is_a_boolean(tmp_path: Path) -> None:
    path = write_config(tmp_path, database="x", kind="production")
    assert not load_config(path).targets["staging"].require_read_only_role
    path = write_config(tmp_path, database="x", target_extra="require_read_only_role = true")
    assert load_config(path).targets["staging"].require_read_only_role
    path = write_config(tmp_path, database="x", target_extra='require_read_only_role = "yes"')
    with pytest.raises(ConfigError, match=r"targets\.staging\.require_read_only_role: must be"):
        load_config(path)


def test_attack_in_config_stops_the_run_with_a_usage_error(
    tmp_path: Path, run_phase: RunPhase
) -> None:
    attack = ATTACKS["commit then read write"]
    path = write_config(tmp_path, database="x", extra=f'[flags]\nquery = "{attack}"\n')
    run = run_phase(path, phase="prd-pilot", url="postgresql://u@127.0.0.1/x")
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "flags.query: 5 statements where one is allowed" in run.output


def _state(db: ScenarioDb) -> tuple[object, ...]:
    engine = create_engine(db.url)
    with engine.connect() as connection:
        row = tuple(connection.execute(text(STATE)).one())
    engine.dispose()
    return row
