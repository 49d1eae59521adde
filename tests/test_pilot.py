"""PRD-PILOT 3.1/3.2 and PRD-GA checks on a real Postgres (reference schema at head), both ways."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import (
    SQL,
    FlagRelation,
    FlagSourceConfig,
    FlagTable,
    read_flags,
)
from pytest_ledger_rollout.checks.ga.general_use import check_general_use
from pytest_ledger_rollout.checks.ga.rollback import check_rollback_plan
from pytest_ledger_rollout.checks.ga.waves import (
    check_enforce_after_tenant_backfill,
    check_enforce_with_signature,
    check_enforced_backfill,
    check_waves,
)
from pytest_ledger_rollout.checks.ledger import LedgerTables, check_no_mismatch
from pytest_ledger_rollout.checks.pilot.blast_radius import check_pilot_flags
from pytest_ledger_rollout.checks.pilot.candidates import (
    RiskCriteria,
    check_pilot_tenants,
    rank_candidates,
)
from pytest_ledger_rollout.checks.tenants import TenantTables
from pytest_ledger_rollout.results import CheckResult

from .support import ScenarioDb

LEDGER = LedgerTables()
TABLES = TenantTables(shown=5)
FLAGS = FlagRelation(FlagTable().select(lambda name: f'"{name}"'))  # the default table keys
CRITERIA = RiskCriteria(max_wallets=20, max_withdrawal_volume=Decimal("1000"), volume_days=30)
SIGNATURE, ENFORCE = "webhook_signature_enforced", "ledger_enforce_balance"
LOW_RISK = ["t-001", "t-002", "t-003", "t-004"]


@pytest.fixture
def tenants_db(scenario_db: ScenarioDb) -> ScenarioDb:
    """Eight tenants: t-001..t-004 low-risk, t-005 too many wallets, t-006 too much recent
    withdrawal volume, t-007 an open finding, t-008 no wallet. Every wallet backfilled two hours
    ago; both flags off globally."""
    scenario_db.upgrade("head")
    scenario_db.execute(
        "INSERT INTO tenants (id, name) SELECT format('t-%s', lpad(i::text, 3, '0')), 'tenant'"
        " FROM generate_series(1, 8) i",
        "INSERT INTO wallets (tenant_id, owner_ref, balance)"
        " SELECT t.id, 'u-' || i, i * 10 FROM tenants t,"
        " generate_series(1, CASE t.id WHEN 't-005' THEN 30 WHEN 't-008' THEN 0 ELSE 5 END) i",
        "INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type, reference,"
        " created_at) SELECT id, tenant_id, balance, 'opening_balance', 'backfill:opening',"
        " now() - interval '2 hours' FROM wallets",
        # Counted: t-006's recent paid withdrawals. Not counted: a rejected one (credited back)
        # and one older than the window.
        "INSERT INTO withdrawals (wallet_id, tenant_id, amount, status, created_at)"
        " SELECT w.id, w.tenant_id, v.amount, v.status, now() - v.age FROM wallets w"
        " JOIN (VALUES ('t-006', 400, 'paid', interval '1 day'),"
        " ('t-001', 5000, 'rejected', interval '1 day'),"
        " ('t-002', 5000, 'paid', interval '40 days')) AS v(tenant, amount, status, age)"
        " ON v.tenant = w.tenant_id",
        # Applied deposits are bookkeeping rows, even one left unresolved: never open findings.
        "INSERT INTO reconciliation_findings (provider, provider_event_id, finding_type,"
        " tenant_id, resolved) SELECT 'psp', v.tenant || '-' || i, v.type, v.tenant, v.resolved"
        " FROM generate_series(1, 3) i, (VALUES ('t-001', 'webhook_deposit_applied', true),"
        " ('t-002', 'webhook_deposit_applied', false), ('t-003', 'amount_mismatch', true),"
        " ('t-007', 'missing_deposit', false)) AS v(tenant, type, resolved)",
        f"INSERT INTO feature_flags (key, enabled, changed_at) SELECT key, false,"
        f" now() - interval '1 day' FROM unnest(ARRAY['{SIGNATURE}', '{ENFORCE}']) key",
    )
    return scenario_db


def _flags_on(db: ScenarioDb, keys: list[str], tenants: list[str], enabled: bool = True) -> None:
    """Tenant rows, turned on (or off) an hour ago: after the backfill."""
    db.execute(
        "INSERT INTO feature_flags (key, tenant_id, enabled, changed_at)"
        f" SELECT k, t, {enabled}, now() - interval '1 hour'"
        f" FROM unnest(ARRAY{keys}) k, unnest(ARRAY{tenants}) t"
        " ON CONFLICT (key, coalesce(tenant_id, '')) DO UPDATE SET enabled = excluded.enabled"
    )


def _global(db: ScenarioDb, key: str, enabled: bool) -> None:
    db.execute(
        f"UPDATE feature_flags SET enabled = {enabled} WHERE key = '{key}' AND tenant_id IS NULL"
    )


def _check(db: ScenarioDb, run: Callable[[Connection], CheckResult]) -> CheckResult:
    with db.engine.connect() as connection:
        return run(connection)


def _failure(result: CheckResult) -> str:
    """The failure as one text, for asserting on what it names."""
    assert result.failure is not None, result.summary
    return "\n".join([result.failure.title, result.failure.seen, result.failure.remedy])


# --- 3.1 -------------------------------------------------------------------------------------


def _pilots(db: ScenarioDb, pilots: list[str]) -> CheckResult:
    return _check(db, lambda c: check_pilot_tenants(c, LEDGER, TABLES, CRITERIA, pilots))


def test_low_risk_pilots_pass(tenants_db: ScenarioDb) -> None:
    result = _pilots(tenants_db, ["t-001", "t-002", "t-003"])
    assert result.ok, result.failure
    assert result.summary == "3 low-risk pilot tenants: t-001, t-002, t-003"
    assert "t-002: 5 wallets, withdrawals 0, 0 open findings -> low risk" in result.evidence[1].body


def test_four_pilots_fail(tenants_db: ScenarioDb) -> None:
    failure = _failure(_pilots(tenants_db, LOW_RISK))
    assert "4 pilot tenants configured: t-001, t-002, t-003, t-004" in failure


def test_no_pilot_fails(tenants_db: ScenarioDb) -> None:
    assert "0 pilot tenants configured: (none)" in _failure(_pilots(tenants_db, []))


@pytest.mark.parametrize(
    ("tenant", "breach"),
    [
        ("t-005", "t-005: 30 wallets, withdrawals 0, 0 open findings -> 30 wallets > max 20"),
        ("t-006", "-> withdrawals 2000.00 in 30 days > max 1000"),
        ("t-007", "-> 3 open findings > max 0"),
        ("t-008", "-> 0 wallets < min 1"),
        ("t-404", "t-404: no such tenant"),
    ],
)
def test_high_risk_or_unknown_pilot_fails(tenants_db: ScenarioDb, tenant: str, breach: str) -> None:
    failure = _failure(_pilots(tenants_db, ["t-001", tenant]))
    assert breach in failure
    assert "t-001" not in failure.split("\n", 1)[1].split("\n")[0]  # the good one is not blamed


def test_candidates_are_ranked_lowest_risk_first_and_bounded(tenants_db: ScenarioDb) -> None:
    with tenants_db.engine.connect() as connection:
        _, top = rank_candidates(connection, LEDGER, TABLES, CRITERIA, limit=3)
        _, everyone = rank_candidates(connection, LEDGER, TABLES, CRITERIA, limit=100)
    assert len(top) == 3 and all(r.low_risk for r in top)
    assert [r.tenant for r in everyone[:4]] == LOW_RISK
    assert {r.tenant for r in everyone[4:]} == {"t-005", "t-006", "t-007", "t-008"}
    assert not any(r.low_risk for r in everyone[4:])


# --- 3.2 -------------------------------------------------------------------------------------

PILOT = ["t-001", "t-002"]
KEYS = [SIGNATURE, ENFORCE]


@pytest.fixture
def pilot_db(tenants_db: ScenarioDb) -> ScenarioDb:
    _flags_on(tenants_db, KEYS, PILOT)
    return tenants_db


def _pilot_flags(db: ScenarioDb) -> CheckResult:
    return _check(db, lambda c: check_pilot_flags(c, FLAGS, TABLES, KEYS, PILOT))


def test_pilot_flags_contained_pass(pilot_db: ScenarioDb) -> None:
    result = _pilot_flags(pilot_db)
    assert result.ok, result.failure
    assert "on for t-001, t-002 only (off for the other 6 tenants)" in result.summary


def test_non_pilot_tenant_with_enforce_on_fails(pilot_db: ScenarioDb) -> None:
    _flags_on(pilot_db, [ENFORCE], ["t-004"])
    failure = _failure(_pilot_flags(pilot_db))
    assert f"{ENFORCE}: on for 1 tenants outside the pilot: t-004 (tenant row)" in failure
    assert SIGNATURE not in failure.split("\n", 1)[1].split("\n")[0]


def test_global_row_on_leaks_to_every_tenant_without_own_row(pilot_db: ScenarioDb) -> None:
    _flags_on(pilot_db, [SIGNATURE], ["t-003"], enabled=False)
    _global(pilot_db, SIGNATURE, True)
    failure = _failure(_pilot_flags(pilot_db))
    # t-003's own row off beats the global row; the five other non-pilots inherit it.
    assert (
        f"{SIGNATURE}: on for 5 tenants outside the pilot: t-004 (global row), t-005 (global row)"
        in failure
    )
    assert "t-003" not in failure


def test_pilot_tenant_with_flag_off_fails(pilot_db: ScenarioDb) -> None:
    pilot_db.execute(f"DELETE FROM feature_flags WHERE key = '{ENFORCE}'")
    failure = _failure(_pilot_flags(pilot_db))
    assert f"{ENFORCE}: off for 2 of them: t-001 (no row), t-002 (no row)" in failure


def test_no_pilot_is_never_contained(pilot_db: ScenarioDb) -> None:
    result = _check(pilot_db, lambda c: check_pilot_flags(c, FLAGS, TABLES, KEYS, []))
    assert "no pilot tenant or no flag configured" in _failure(result)


def test_pilot_backfill_is_tenant_scoped(pilot_db: ScenarioDb) -> None:
    pilot_db.execute("UPDATE wallets SET balance = balance + 1 WHERE tenant_id = 't-003'")
    with pilot_db.engine.connect() as connection:
        assert check_no_mismatch(connection, LEDGER, tenants=PILOT).ok
        pilot_db.execute("UPDATE wallets SET balance = balance + 1 WHERE tenant_id = 't-002'")
        result = check_no_mismatch(connection, LEDGER, tenants=PILOT)
    assert "5 of 10 wallets differ from the ledger (tenants t-001, t-002)" in _failure(result)


# --- PRD-GA ----------------------------------------------------------------------------------

WAVES = [["t-001", "t-002"], ["t-003"]]
PLAN = {tenant: [ENFORCE] for wave in WAVES for tenant in wave}


@pytest.fixture
def ga_db(tenants_db: ScenarioDb) -> ScenarioDb:
    """Enforce on for the three waved tenants an hour ago; signature on globally."""
    _flags_on(tenants_db, [ENFORCE], [t for wave in WAVES for t in wave])
    _global(tenants_db, SIGNATURE, True)
    return tenants_db


def _waves(db: ScenarioDb, waves: list[list[str]]) -> CheckResult:
    return _check(db, lambda c: check_waves(c, FLAGS, TABLES, ENFORCE, waves))


def test_enforced_tenants_equal_the_waves(ga_db: ScenarioDb) -> None:
    result = _waves(ga_db, WAVES)
    assert result.ok, result.failure
    assert result.summary == f"{ENFORCE} on for exactly the 3 tenants of 2 waves"


def test_waves_mismatch_fails(ga_db: ScenarioDb) -> None:
    failure = _failure(_waves(ga_db, [["t-001"], ["t-003", "t-004"]]))
    assert f"{ENFORCE}: off for 1 of them: t-004 (global row)" in failure
    assert f"{ENFORCE}: on for 1 tenants in no declared wave: t-002 (tenant row)" in failure
    assert "not tenants" not in failure
    assert "not tenants: t-999" in _failure(_waves(ga_db, [*WAVES, ["t-999"]]))
    assert "no wave declared" in _failure(_waves(ga_db, []))


def test_enforced_tenants_need_a_clean_backfill(ga_db: ScenarioDb) -> None:
    def run(c: Connection) -> CheckResult:
        return check_enforced_backfill(c, LEDGER, FLAGS, TABLES, ENFORCE)

    ga_db.execute("UPDATE wallets SET balance = balance + 1 WHERE tenant_id = 't-004'")
    result = _check(ga_db, run)
    assert result.ok, result.failure
    assert result.summary.startswith(f"3 tenants with {ENFORCE} on: 15 wallets in 3 tenants")
    ga_db.execute("UPDATE wallets SET balance = balance + 1 WHERE tenant_id = 't-003'")
    failure = _failure(_check(ga_db, run))
    assert "5 of 15 wallets differ from the ledger (tenants t-001, t-002, t-003)" in failure
    assert f"Revert {ENFORCE} for the tenants listed" in failure
    ga_db.execute(f"DELETE FROM feature_flags WHERE key = '{ENFORCE}'")
    assert f"No tenant has {ENFORCE} on" in _failure(_check(ga_db, run))


def test_enforce_without_signature_fails(ga_db: ScenarioDb) -> None:
    def run(c: Connection) -> CheckResult:
        return check_enforce_with_signature(c, FLAGS, TABLES, ENFORCE, SIGNATURE)

    assert _check(ga_db, run).summary == f"{SIGNATURE} on for all 3 tenants with {ENFORCE} on"
    _flags_on(ga_db, [SIGNATURE], ["t-002", "t-004"], enabled=False)  # t-004 is not enforced
    failure = _failure(_check(ga_db, run))
    assert f"1 tenants have {ENFORCE} on without {SIGNATURE}" in failure
    assert f"{ENFORCE} on, {SIGNATURE} off: t-002\n" in failure


def test_enforce_before_the_tenants_backfill_fails(ga_db: ScenarioDb) -> None:
    def run(c: Connection) -> CheckResult:
        return check_enforce_after_tenant_backfill(c, LEDGER, FLAGS, TABLES, ENFORCE)

    result = _check(ga_db, run)
    assert result.ok, result.failure
    # A later backfill write in t-003 (after its flip) and in t-004 (not enforced).
    ga_db.execute(
        "INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type, reference)"
        " SELECT min(id), tenant_id, 1, 'adjustment', 'backfill:after-1' FROM wallets"
        " WHERE tenant_id IN ('t-003', 't-004') GROUP BY tenant_id"
    )
    failure = _failure(_check(ga_db, run))
    assert f"1 tenants had {ENFORCE} turned on before their backfill finished" in failure
    seen = failure.split("\n")[1]
    assert seen.startswith("t-003: on ") and "(tenant row), backfill until " in seen


def test_enforce_order_without_change_times_is_shown_not_failed(ga_db: ScenarioDb) -> None:
    untimed = FlagRelation(
        "SELECT key, tenant_id AS tenant, enabled, NULL::timestamptz AS changed_at"
        " FROM feature_flags -- a configured query: this table's change times are not kept"
    )
    result = _check(
        ga_db, lambda c: check_enforce_after_tenant_backfill(c, LEDGER, untimed, TABLES, ENFORCE)
    )
    assert result.ok, result.failure
    assert "3 without change time (not provable): t-001, t-002, t-003" in result.summary


def _plan(db: ScenarioDb, plan: dict[str, list[str]]) -> CheckResult:
    return _check(db, lambda c: check_rollback_plan(c, FLAGS, TABLES, plan))


def test_rollback_plan_ready(ga_db: ScenarioDb) -> None:
    result = _plan(ga_db, PLAN)
    assert result.ok, result.failure
    assert result.summary == "rollback plan ready: 3 tenant flag rows for 3 tenants"


def test_rollback_plan_flag_missing_fails(ga_db: ScenarioDb) -> None:
    # The signature flag is global only: reverting it would reach every tenant.
    failure = _failure(_plan(ga_db, {**PLAN, "t-001": [ENFORCE, SIGNATURE], "t-999": [ENFORCE]}))
    assert "2 of 5 planned reverts have no tenant row" in failure
    assert f"t-001: {SIGNATURE}\nt-999: {ENFORCE} (no such tenant)" in failure
    assert "an empty rollback plan" in _failure(_plan(ga_db, {}))


def test_general_use(ga_db: ScenarioDb) -> None:
    def use(share: float) -> CheckResult:
        return _check(ga_db, lambda c: check_general_use(c, FLAGS, TABLES, ENFORCE, share))

    failure = _failure(use(1.0))
    assert f"{ENFORCE} is not in general use: 3 of 8 tenants" in failure
    assert "off for 5: t-004, t-005, t-006, t-007, t-008" in failure
    assert use(0.375).ok
    _global(ga_db, ENFORCE, True)
    _flags_on(ga_db, [ENFORCE], ["t-008"], enabled=False)
    assert "7 of 8 tenants" in _failure(use(1.0))
    assert use(0.875).summary == f"{ENFORCE} on for 7 of 8 tenants (at least 88% of the tenants)"


# --- Scale -----------------------------------------------------------------------------------


@pytest.fixture
def statements(tenants_db: ScenarioDb) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: object) -> None:
        seen.append(str(args[2]))

    event.listen(tenants_db.engine, "before_cursor_execute", record)
    yield seen
    event.remove(tenants_db.engine, "before_cursor_execute", record)


@pytest.mark.parametrize("source", ["table", "rows from http or file"])
def test_a_thousand_tenants_stay_one_statement_per_check(
    tenants_db: ScenarioDb, statements: list[str], source: str
) -> None:
    tenants_db.execute(
        "INSERT INTO tenants (id, name) SELECT format('s-%s', i), 'scale'"
        " FROM generate_series(1, 992) i",
        "INSERT INTO wallets (tenant_id, owner_ref, balance)"
        " SELECT id, 'u-1', 0 FROM tenants WHERE id LIKE 's-%'",
        f"INSERT INTO feature_flags (key, tenant_id, enabled) SELECT '{ENFORCE}', id, true"
        " FROM tenants",
    )
    waves = [[f"t-00{i}" for i in range(1, 9)], [f"s-{i}" for i in range(1, 993)]]
    flags = FLAGS
    if source != "table":  # the rows a flag service reported, bound into each statement
        with tenants_db.engine.connect() as connection:
            flags = FlagRelation(states=tuple(read_flags(FlagSourceConfig(SQL), connection)))
    checks: dict[str, Callable[[Connection], object]] = {
        "pilot tenants": lambda c: check_pilot_tenants(c, LEDGER, TABLES, CRITERIA, PILOT),
        "candidates": lambda c: rank_candidates(c, LEDGER, TABLES, CRITERIA),
        "pilot flags": lambda c: check_pilot_flags(c, flags, TABLES, KEYS, PILOT),
        "waves": lambda c: check_waves(c, flags, TABLES, ENFORCE, waves),
        "signature": lambda c: check_enforce_with_signature(c, flags, TABLES, ENFORCE, SIGNATURE),
        "order": lambda c: check_enforce_after_tenant_backfill(c, LEDGER, flags, TABLES, ENFORCE),
        "plan": lambda c: check_rollback_plan(c, flags, TABLES, {t: [ENFORCE] for t in waves[1]}),
        "general use": lambda c: check_general_use(c, flags, TABLES, ENFORCE),
    }
    with tenants_db.engine.connect() as connection:
        for name, run in checks.items():
            statements.clear()
            run(connection)
            assert len(statements) == 1, name
        statements.clear()
        result = check_enforced_backfill(connection, LEDGER, flags, TABLES, ENFORCE)
    assert len(statements) == 2  # the enforced tenants, then their mismatches
    assert result.summary.startswith(f"1000 tenants with {ENFORCE} on")
    assert all(s.lstrip().upper().startswith(("SELECT", "WITH")) for s in statements)
