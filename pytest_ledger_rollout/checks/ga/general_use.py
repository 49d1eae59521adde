"""4.3: enforcement is in general use (at least the configured share of tenants)."""

from __future__ import annotations

import math

from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import FlagRelation
from pytest_ledger_rollout.checks.tenants import (
    Listed,
    TenantTables,
    flag_ctes,
    listed_sql,
    quote,
    run_sql,
)
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed


def check_general_use(
    connection: Connection,
    flags: FlagRelation,
    tables: TenantTables,
    enforce: str,
    min_share: float = 1.0,
) -> CheckResult:
    """Final DoD: ``enforce`` on for all tenants, or at least ``min_share`` of them."""
    sql = f"""
        WITH {flag_ctes(flags, tables, quote(connection))}
        SELECT count(*) AS tenants, count(*) FILTER (WHERE e.enabled) AS enabled,
               {listed_sql("off", "NOT e.enabled", "e.tenant", tables.shown)}
        FROM effective e
    """
    shown, rows = run_sql(connection, sql, keys=[enforce], **flags.params())
    tenants, enabled, off = rows[0]["tenants"], rows[0]["enabled"], Listed.from_row(rows[0], "off")
    required = math.ceil(min_share * tenants - 1e-9)  # float noise must not demand one more
    evidence = Evidence("general use query (one statement)", shown)
    wanted = "all tenants" if min_share >= 1 else f"at least {min_share:.0%} of the tenants"
    if tenants == 0 or enabled < required:
        return failed(
            Failure(
                f"{enforce} is not in general use: {enabled} of {tenants} tenants",
                expected=f"{enforce} on for {wanted} ({required} of {tenants})",
                seen=f"on for {enabled}; off for {off.count}: {off}",
                remedy="Widen the remaining waves as the runbook says, then rerun the phase.",
            ),
            evidence,
        )
    return passed(f"{enforce} on for {enabled} of {tenants} tenants ({wanted})", evidence)
