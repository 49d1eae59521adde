"""4.2: the rollback plan is ready (the flags to turn off exist and can be turned off)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import FlagRelation
from pytest_ledger_rollout.checks.tenants import (
    Listed,
    TenantTables,
    listed_sql,
    quote,
    run_sql,
)
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed


def check_rollback_plan(
    connection: Connection,
    flags: FlagRelation,
    tables: TenantTables,
    plan: Mapping[str, Sequence[str]],
) -> CheckResult:
    """OPS-02 readiness: every flag the plan reverts (tenant -> flags) exists as that tenant's
    own row, so reverting one tenant is one row's update and never touches the others."""
    steps = [(tenant, key) for tenant, keys in plan.items() for key in keys]
    q = quote(connection)
    t, tid = q(tables.tenants), q(tables.tenant_id)
    label = (
        "e.tenant || ': ' || e.key "
        "|| CASE WHEN t.tenant IS NULL THEN ' (no such tenant)' ELSE '' END"
    )
    sql = f"""
        WITH {flags.cte()}
        SELECT count(*) AS steps,
               {listed_sql("missing", "f.present IS NULL", label, tables.shown, "e.tenant, e.key")}
        FROM unnest(CAST(:tenants AS text[]), CAST(:keys AS text[])) AS e(tenant, key)
        LEFT JOIN (SELECT {tid}::text AS tenant FROM {t}) t ON t.tenant = e.tenant
        LEFT JOIN (SELECT DISTINCT tenant, key, true AS present
                   FROM flag_rows WHERE tenant IS NOT NULL) f
               ON f.tenant = e.tenant AND f.key = e.key
    """
    shown, rows = run_sql(
        connection,
        sql,
        tenants=[s[0] for s in steps],
        keys=[s[1] for s in steps],
        **flags.params(),
    )
    missing = Listed.from_row(rows[0], "missing")
    evidence = (
        Evidence("rollback plan rows query (one statement)", shown),
        Evidence(
            "rollback plan",
            "\n".join(f"{tenant}: {', '.join(keys)}" for tenant, keys in plan.items()),
        ),
    )
    if missing.count or not steps:
        return failed(
            Failure(
                "The rollback plan cannot be applied tenant by tenant",
                expected="a plan naming, per tenant, flags that exist as the tenant's own row",
                seen=(
                    f"{missing.count} of {len(steps)} planned reverts have no tenant row:\n"
                    + missing.lines()
                )
                if steps
                else "an empty rollback plan",
                remedy=(
                    "Give each tenant of the plan its own row for each flag (it then overrides "
                    "the global row), or fix the plan's tenant and flag names in the rollout "
                    "config."
                ),
            ),
            *evidence,
        )
    return passed(
        f"rollback plan ready: {len(steps)} tenant flag rows for {len(plan)} tenants", *evidence
    )
