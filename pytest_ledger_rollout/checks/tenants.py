"""Tenants, and the set-based SQL the PRD checks share (production data, read-only).

Every check is one set-based SELECT over all tenants, whatever their number (1,000 tenants stay
one statement; the GA backfill check is two: the enforced tenants, then ``ledger``'s mismatch
statement over them). Python only sees per-key or per-check figures and bounded lists.
Flags come from the configured source as one relation (``flags.FlagRelation``) and are judged
by the one effective-state rule (``flags.effective_cte``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import FlagRelation, Quote, effective_cte
from pytest_ledger_rollout.results import Evidence


@dataclass(frozen=True)
class TenantTables:
    """The tables ``LedgerTables`` does not name (the reference backend's names); the tenants
    table and its id column come from ``[tenants]``."""

    tenants: str = "tenants"
    tenant_id: str = "id"
    withdrawals: str = "withdrawals"
    withdrawal_tenant: str = "tenant_id"
    withdrawal_amount: str = "amount"
    withdrawal_status: str = "status"
    withdrawal_created_at: str = "created_at"
    findings: str = "reconciliation_findings"
    finding_tenant: str = "tenant_id"
    finding_type: str = "finding_type"
    finding_resolved: str = "resolved"
    # Rows the service writes as bookkeeping (applied deposits, resolved=true): never findings.
    bookkeeping_findings: tuple[str, ...] = ("webhook_deposit_applied",)
    shown: int = 10  # how many offending tenants a failure lists


@dataclass(frozen=True)
class Listed:
    """How many tenants matched a condition, and the first few of them."""

    count: int
    shown: tuple[str, ...]

    @classmethod
    def from_row(cls, row: Mapping[str, Any], name: str) -> Listed:
        """The count and list that ``listed_sql(name, ...)`` selected."""
        return cls(row[f"{name}_n"], tuple(row[name] or ()))

    def __str__(self) -> str:
        return ", ".join(self.shown) + self._more()

    def lines(self) -> str:
        return "\n".join(self.shown) + self._more()

    def _more(self) -> str:
        return f" (+{self.count - len(self.shown)} more)" if self.count > len(self.shown) else ""


def quote(connection: Connection) -> Quote:
    return connection.dialect.identifier_preparer.quote


def run_sql(connection: Connection, sql: str, **params: Any) -> tuple[str, list[dict[str, Any]]]:
    rows = connection.execute(text(sql), params).mappings().all()
    return " ".join(sql.split()), [dict(row) for row in rows]


def listed_sql(name: str, condition: str, label: str, shown: int, order: str = "e.tenant") -> str:
    """A count and a bounded, ordered list of the rows meeting ``condition``."""
    return (
        f"count(*) FILTER (WHERE {condition}) AS {name}_n, "
        f"(array_agg({label} ORDER BY {order}) FILTER (WHERE {condition}))[1:{int(shown)}] "
        f"AS {name}"
    )


def flag_ctes(flags: FlagRelation, tables: TenantTables, q: Quote) -> str:
    """flag_rows and effective, for every tenant and each of :keys."""
    tenant_ids = f"SELECT {q(tables.tenant_id)}::text AS tenant FROM {q(tables.tenants)}"
    return f"{flags.cte()},\n{effective_cte(tenant_ids)}"


def enforced_tenants(
    connection: Connection, flags: FlagRelation, tables: TenantTables, enforce: str
) -> tuple[str, list[str]]:
    sql = f"""
        WITH {flag_ctes(flags, tables, quote(connection))}
        SELECT tenant FROM effective WHERE enabled ORDER BY tenant
    """
    shown, rows = run_sql(connection, sql, keys=[enforce], **flags.params())
    return shown, [row["tenant"] for row in rows]


# Offenders are named with where their state comes from: a global row on is the usual leak.
SOURCED = "e.tenant || ' (' || e.source || ')'"


@dataclass(frozen=True)
class FlagScope:
    key: str
    tenants: int  # tenants in the database
    missing: Listed  # listed tenants whose flag is off
    extra: Listed  # tenants outside the list whose flag is on
    unknown: tuple[str, ...]  # listed ids that are no tenant

    def problems(self, outside: str) -> list[str]:
        lines = []
        if self.missing.count:
            lines.append(f"{self.key}: off for {self.missing.count} of them: {self.missing}")
        if self.extra.count:
            lines.append(f"{self.key}: on for {self.extra.count} tenants {outside}: {self.extra}")
        if self.unknown:
            lines.append(f"not tenants: {', '.join(self.unknown)}")
        return lines


def flag_scope(
    connection: Connection,
    flags: FlagRelation,
    tables: TenantTables,
    keys: Sequence[str],
    listed: Sequence[str],
) -> tuple[str, list[FlagScope]]:
    """Per key, in one statement: listed tenants with the flag off, others with it on."""
    q, n = quote(connection), tables.shown
    in_list = "l.tenant IS NOT NULL"
    sql = f"""
        WITH {flag_ctes(flags, tables, q)},
        listed AS (SELECT DISTINCT unnest(CAST(:listed AS text[])) AS tenant)
        SELECT k.key, count(e.tenant) AS tenants,
               {listed_sql("missing", f"{in_list} AND NOT e.enabled", SOURCED, n)},
               {listed_sql("extra", f"NOT ({in_list}) AND e.enabled", SOURCED, n)},
               ARRAY(SELECT tenant FROM listed
                     WHERE tenant NOT IN (SELECT tenant FROM effective) ORDER BY tenant) AS unknown
        FROM unnest(CAST(:keys AS text[])) AS k(key)
        LEFT JOIN (effective e LEFT JOIN listed l ON l.tenant = e.tenant) ON e.key = k.key
        GROUP BY k.key ORDER BY array_position(CAST(:keys AS text[]), k.key)
    """
    shown, rows = run_sql(connection, sql, keys=list(keys), listed=list(listed), **flags.params())
    scopes = [
        FlagScope(
            row["key"],
            row["tenants"],
            Listed.from_row(row, "missing"),
            Listed.from_row(row, "extra"),
            tuple(row["unknown"]),
        )
        for row in rows
    ]
    return shown, scopes


def scope_evidence(sql: str, scopes: Sequence[FlagScope]) -> tuple[Evidence, ...]:
    return (
        Evidence("effective flag states query (one statement)", sql),
        Evidence(
            "per flag: tenants, listed off, others on",
            "\n".join(
                f"{s.key}: {s.tenants} tenants; off in list: {s.missing.count}; "
                f"on outside: {s.extra.count}"
                for s in scopes
            ),
        ),
    )
