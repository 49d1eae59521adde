"""Session safety on a real server: timeouts, application_name, read-only production."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import InternalError, OperationalError

from pytest_ledger_rollout.phases.opened_target import TargetRefused, require_destructive
from pytest_ledger_rollout.targets.connection import SessionLimits, open_engine
from pytest_ledger_rollout.targets.identity import prove_identity, read_identity

from .support import ScenarioDb

LIMITS = SessionLimits(statement_timeout_ms=1500, lock_timeout_ms=700)


def test_every_session_has_timeouts_and_names_the_plugin(scenario_db: ScenarioDb) -> None:
    engine = open_engine(scenario_db.url, "staging", "stg-mig", LIMITS)
    with engine.connect() as connection:
        settings = connection.execute(
            text(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
                " current_setting('application_name'), current_setting('transaction_read_only')"
            )
        ).one()
        with pytest.raises(OperationalError, match="canceling statement due to statement timeout"):
            connection.execute(text("SELECT pg_sleep(5)"))
    engine.dispose()
    assert tuple(settings) == ("1500ms", "700ms", "pytest-ledger-rollout/stg-mig", "off")


def test_production_session_refuses_writes(scenario_db: ScenarioDb) -> None:
    engine = open_engine(scenario_db.url, "production", "prd-pilot", LIMITS)
    with engine.connect() as connection:
        assert read_identity(connection).read_only
        with pytest.raises(InternalError, match="cannot execute INSERT in a read-only transaction"):
            connection.execute(text("INSERT INTO tenants (id, name) VALUES ('t-1', 'x')"))
    engine.dispose()
    assert scenario_db.scalar("SELECT count(*) FROM tenants") == 0


def test_destructive_steps_are_refused_on_production(scenario_db: ScenarioDb) -> None:
    with pytest.raises(TargetRefused, match="Destructive steps never run on a production"):
        require_destructive("production")
    require_destructive("staging")


def test_identity_from_server_must_match(scenario_db: ScenarioDb) -> None:
    engine = open_engine(scenario_db.url, "staging", "stg-mig", LIMITS)
    with engine.connect() as connection:
        identity = read_identity(connection)
    engine.dispose()
    ok = prove_identity(scenario_db.url, "127.0.0.1", scenario_db.name, (), identity)
    assert ok.ok, ok.failure
    behind_proxy = prove_identity(
        scenario_db.url, "127.0.0.1", scenario_db.name, ("10.9.8.7",), identity
    )
    assert behind_proxy.failure is not None
    assert (
        "inet_server_addr() = 127.0.0.1, not an address of 127.0.0.1" in behind_proxy.failure.seen
    )
    wrong_host = prove_identity(
        scenario_db.url, "pg-staging.internal", scenario_db.name, (), identity
    )
    assert wrong_host.failure is not None
    assert "the URL's host is 127.0.0.1, expected pg-staging.internal" in wrong_host.failure.seen
