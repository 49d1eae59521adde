"""Flag sources (sql, http on loopback, file) and the flag checks, both ways."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from pytest_ledger_rollout.checks.flags import (
    FILE,
    GLOBAL_ROW,
    HTTP,
    NO_ROW,
    SQL,
    TENANT_ROW,
    Effective,
    FlagRelation,
    FlagSourceConfig,
    FlagSourceError,
    FlagState,
    check_flip_order,
    check_on_everywhere,
    effective,
    effective_cte,
    read_flags,
)

from .loopback_http import LoopbackHTTP, Reply
from .support import ScenarioDb, insert_flag_states

ORDER = (
    "ledger_shadow_write",
    "ledger_balance_mismatch_log",
    "webhook_signature_enforced",
    "ledger_enforce_balance",
)


@pytest.fixture
def flags_db(scenario_db: ScenarioDb) -> ScenarioDb:
    """The four flags on globally, flipped a minute apart in runbook order."""
    scenario_db.upgrade("head")
    scenario_db.execute(
        "INSERT INTO tenants (id, name) VALUES ('t-001', 'one')",
        "INSERT INTO feature_flags (key, enabled, changed_at)"
        " SELECT key, true, now() - (5 - i) * interval '1 minute'"
        " FROM unnest(ARRAY['ledger_shadow_write', 'ledger_balance_mismatch_log',"
        " 'webhook_signature_enforced', 'ledger_enforce_balance']) WITH ORDINALITY AS f(key, i)",
    )
    return scenario_db


SQL_FLAGS = FlagSourceConfig(SQL)  # the reference table, by the default table keys


def test_sql_source_all_on_in_order_passes(flags_db: ScenarioDb) -> None:
    with flags_db.engine.connect() as connection:
        states = read_flags(SQL_FLAGS, connection)
    assert check_on_everywhere(states, ORDER).ok
    assert check_flip_order(states, ORDER).summary.startswith("flipped in order")


def test_tenant_override_off_fails(flags_db: ScenarioDb) -> None:
    flags_db.execute(
        "INSERT INTO feature_flags (key, tenant_id, enabled) VALUES"
        " ('ledger_enforce_balance', 't-001', false)"
    )
    with flags_db.engine.connect() as connection:
        states = read_flags(SQL_FLAGS, connection)
    result = check_on_everywhere(states, ["ledger_enforce_balance"])
    assert result.failure is not None
    assert "ledger_enforce_balance: overridden off for t-001" in result.failure.seen


def test_flag_off_or_missing_fails(flags_db: ScenarioDb) -> None:
    flags_db.execute("UPDATE feature_flags SET enabled = false WHERE key = 'ledger_shadow_write'")
    with flags_db.engine.connect() as connection:
        states = read_flags(SQL_FLAGS, connection)
    result = check_on_everywhere(states, ["ledger_shadow_write", "ledger_unknown"])
    assert result.failure is not None
    assert "ledger_shadow_write: off globally" in result.failure.seen
    assert "ledger_unknown: no global value (missing means off)" in result.failure.seen


def test_flips_out_of_order_fail(flags_db: ScenarioDb) -> None:
    flags_db.execute(
        "UPDATE feature_flags SET changed_at = now() - interval '1 hour'"
        " WHERE key = 'ledger_enforce_balance'"
    )
    with flags_db.engine.connect() as connection:
        states = read_flags(SQL_FLAGS, connection)
    result = check_flip_order(states, ORDER)
    assert result.failure is not None
    assert result.failure.title == "Flags were flipped out of runbook order"
    assert "ledger_enforce_balance (" in result.failure.seen
    assert "before webhook_signature_enforced" in result.failure.seen


FLAGS_JSON = [
    {"key": key, "tenant": None, "enabled": True, "changed_at": f"2026-11-28T10:0{i}:00+00:00"}
    for i, key in enumerate(ORDER)
]


def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": FLAGS_JSON}))
    states = read_flags(FlagSourceConfig(FILE, path=path), None)
    assert check_on_everywhere(states, ORDER).ok
    assert check_flip_order(states, ORDER).ok
    path.write_text(json.dumps([{"key": "x", "enabled": "yes"}]))
    with pytest.raises(FlagSourceError, match="'enabled' must be true or false"):
        read_flags(FlagSourceConfig(FILE, path=path), None)


def test_a_key_given_twice_for_one_tenant_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps([*FLAGS_JSON, {**FLAGS_JSON[0], "enabled": False}]))
    with pytest.raises(FlagSourceError, match="ledger_shadow_write is given twice for the global"):
        read_flags(FlagSourceConfig(FILE, path=path), None)


def test_file_without_change_times_cannot_prove_order(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps([{**flag, "changed_at": None} for flag in FLAGS_JSON]))
    result = check_flip_order(read_flags(FlagSourceConfig(FILE, path=path), None), ORDER)
    assert result.failure is not None and result.failure.title == "The flip order cannot be proven"


def test_http_source() -> None:
    reply = Reply(json.dumps(FLAGS_JSON), content_type="application/json")
    with LoopbackHTTP(lambda: reply) as admin:
        source = FlagSourceConfig(HTTP, url=f"{admin.url}/admin/flags")
        assert check_on_everywhere(read_flags(source, None), ORDER).ok
        reply = Reply('{"error": "down"}', status=503)
        with pytest.raises(FlagSourceError, match="answered HTTP 503"):
            read_flags(source, None)
        reply = Reply("<html>login</html>", content_type="text/html")
        with pytest.raises(FlagSourceError, match="not JSON"):
            read_flags(source, None)


def test_a_password_in_the_endpoint_url_is_in_no_message_or_repr() -> None:
    reply = Reply('{"unexpected": true}', content_type="application/json")
    with LoopbackHTTP(lambda: reply) as admin:
        url = admin.url.replace("http://", "http://ops:Pw4Secret9x@") + "/admin/flags"
        source = FlagSourceConfig(HTTP, url=url)
        with pytest.raises(FlagSourceError, match="expected a list of flags") as raised:
            read_flags(source, None)
    assert "Pw4Secret9x" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)  # the endpoint is still named
    assert "Pw4Secret9x" not in repr(source)


def test_http_source_unreachable() -> None:
    with pytest.raises(FlagSourceError, match="unreachable"):
        read_flags(FlagSourceConfig(HTTP, url="http://127.0.0.1:9/admin/flags"), None)


T0 = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
# One row set for both forms of the rule: an override on over a global off (tenant row newer),
# an override off over a global on (tenant row older), a global row only, a tenant row only,
# and a flag with no row at all; t-004 has no rows of its own.
SHARED_ROWS = [
    FlagState("override_on", None, False, T0),
    FlagState("override_on", "t-001", True, T0 + HOUR),
    FlagState("override_off", None, True, T0 + 2 * HOUR),
    FlagState("override_off", "t-002", False, T0 - HOUR),
    FlagState("global_only", None, True, T0 + 3 * HOUR),
    FlagState("tenant_only", "t-003", True, T0 + 4 * HOUR),
]
SHARED_KEYS = ["override_on", "override_off", "global_only", "tenant_only", "missing"]


def _effective_in_sql(db: ScenarioDb, relation: FlagRelation) -> set[Effective]:
    sql = f"WITH {relation.cte()}, {effective_cte('SELECT id AS tenant FROM tenants')} " + (
        "SELECT tenant, key, enabled, changed_at, source FROM effective"
    )
    with db.engine.connect() as connection:
        rows = connection.execute(text(sql), {"keys": SHARED_KEYS, **relation.params()}).all()
    return {Effective(*row) for row in rows}


def test_sql_and_python_forms_of_the_rule_agree(scenario_db: ScenarioDb) -> None:
    scenario_db.upgrade("head")
    scenario_db.execute(
        "INSERT INTO tenants (id, name)"
        " SELECT format('t-00%s', i), 't' FROM generate_series(1, 4) i"
    )
    with scenario_db.engine.begin() as connection:
        insert_flag_states(connection, SHARED_ROWS)
        assert set(read_flags(SQL_FLAGS, connection)) == set(SHARED_ROWS)
        table = FlagRelation.of(SQL_FLAGS, connection)
    tenants = ["t-001", "t-002", "t-003", "t-004"]
    in_python = set(effective(SHARED_ROWS, tenants, SHARED_KEYS))
    # The SQL form over the table, and over the same rows bound as parameters (http, file).
    assert _effective_in_sql(scenario_db, table) == in_python
    assert _effective_in_sql(scenario_db, FlagRelation(states=tuple(SHARED_ROWS))) == in_python
    decided = {(e.tenant, e.key): (e.enabled, e.changed_at, e.source) for e in in_python}
    assert decided["t-001", "override_on"] == (True, T0 + HOUR, TENANT_ROW)
    assert decided["t-004", "override_on"] == (False, T0, GLOBAL_ROW)
    # A tenant row older than the global row still decides, with its own flip time.
    assert decided["t-002", "override_off"] == (False, T0 - HOUR, TENANT_ROW)
    assert decided["t-003", "override_off"] == (True, T0 + 2 * HOUR, GLOBAL_ROW)
    assert decided["t-001", "global_only"] == (True, T0 + 3 * HOUR, GLOBAL_ROW)
    assert decided["t-003", "tenant_only"] == (True, T0 + 4 * HOUR, TENANT_ROW)
    assert decided["t-001", "tenant_only"] == (False, None, NO_ROW)
    assert decided["t-002", "missing"] == (False, None, NO_ROW)
