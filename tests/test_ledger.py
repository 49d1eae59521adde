"""Set-based ledger checks on a real Postgres (reference schema at head)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from pytest_ledger_rollout.checks.ledger import (
    LedgerTables,
    check_enforce_after_backfill,
    check_no_mismatch,
    last_backfill_write,
)

from .support import ScenarioDb

TABLES = LedgerTables(worst_offenders=3)


@pytest.fixture
def ledger_db(scenario_db: ScenarioDb) -> ScenarioDb:
    """Two tenants, 50 wallets each, every legacy balance matched by an opening entry."""
    scenario_db.upgrade("head")
    scenario_db.execute(
        "INSERT INTO tenants (id, name) VALUES ('t-001', 'one'), ('t-002', 'two')",
        "INSERT INTO wallets (tenant_id, owner_ref, balance)"
        " SELECT t, 'owner-' || i, i * 10 FROM unnest(ARRAY['t-001', 't-002']) t,"
        " generate_series(1, 50) i",
        "INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type, reference)"
        " SELECT id, tenant_id, balance, 'opening_balance', 'backfill' FROM wallets",
    )
    return scenario_db


def test_matching_ledger_passes(ledger_db: ScenarioDb) -> None:
    with ledger_db.engine.connect() as connection:
        result = check_no_mismatch(connection, TABLES)
    assert result.ok, result.failure
    assert result.summary == "100 wallets in 2 tenants match the ledger"


def test_mismatches_are_counted_per_tenant_with_bounded_worst_list(ledger_db: ScenarioDb) -> None:
    ledger_db.execute(
        "UPDATE wallets SET balance = balance + 1 WHERE tenant_id = 't-002' AND owner_ref IN"
        " ('owner-1', 'owner-2', 'owner-3', 'owner-4')",
        "UPDATE wallets SET balance = balance + 500"
        " WHERE tenant_id = 't-001' AND owner_ref = 'owner-7'",
    )
    with ledger_db.engine.connect() as connection:
        result = check_no_mismatch(connection, TABLES)
    assert result.failure is not None
    assert result.failure.title == "5 of 100 wallets differ from the ledger (all tenants)"
    assert "per tenant: t-001=1, t-002=4" in result.failure.seen
    offenders = result.failure.seen.split("worst offenders:\n")[1].splitlines()
    assert len(offenders) == 3  # bounded by worst_offenders
    assert (
        offenders[0].startswith("t-001 wallet") and "legacy 570.00 vs ledger 70.00" in offenders[0]
    )
    assert "backfill_wallet_balances --dry-run --batch-size 1000" in result.failure.remedy


def test_tenant_scope_ignores_other_tenants(ledger_db: ScenarioDb) -> None:
    ledger_db.execute("UPDATE wallets SET balance = balance + 1 WHERE tenant_id = 't-002'")
    with ledger_db.engine.connect() as connection:
        assert check_no_mismatch(connection, TABLES, tenants=["t-001"]).ok
        scoped = check_no_mismatch(connection, TABLES, tenants=["t-002"])
    assert scoped.failure is not None
    assert scoped.failure.title == "50 of 50 wallets differ from the ledger (tenants t-002)"


def test_wallet_without_any_entry_is_a_mismatch(ledger_db: ScenarioDb) -> None:
    ledger_db.execute(
        "INSERT INTO wallets (tenant_id, owner_ref, balance) VALUES ('t-001', 'new', 12.50)"
    )
    with ledger_db.engine.connect() as connection:
        result = check_no_mismatch(connection, TABLES)
    assert result.failure is not None
    assert "legacy 12.50 vs ledger 0" in result.failure.seen


def test_no_wallets_is_never_a_pass(scenario_db: ScenarioDb) -> None:
    scenario_db.upgrade("head")
    with scenario_db.engine.connect() as connection:
        result = check_no_mismatch(connection, TABLES)
    assert result.failure is not None
    assert "nothing was verified" in result.failure.title


def test_enforcement_must_follow_the_backfill(ledger_db: ScenarioDb) -> None:
    with ledger_db.engine.connect() as connection:
        backfilled = last_backfill_write(connection, TABLES)
        now = connection.execute(text("SELECT now()")).scalar_one()
    assert backfilled is not None
    later = now + dt.timedelta(seconds=5)
    assert check_enforce_after_backfill("ledger_enforce_balance", later, backfilled).ok
    early = check_enforce_after_backfill(
        "ledger_enforce_balance", backfilled - dt.timedelta(minutes=1), backfilled
    )
    assert early.failure is not None
    assert (
        early.failure.title == "ledger_enforce_balance was turned on before the backfill finished"
    )
    unknown = check_enforce_after_backfill("ledger_enforce_balance", later, None)
    assert unknown.failure is not None and "backfill entries: none" in unknown.failure.seen
