"""Set-based ledger checks: legacy wallet balances against ledger sums, per tenant, in one
statement that Postgres executes; Python only sees per-tenant figures and a bounded list."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed


@dataclass(frozen=True)
class LedgerTables:
    """Where the legacy balances and the ledger live (the reference backend's names)."""

    wallets: str = "wallets"
    wallet_id: str = "id"
    wallet_tenant: str = "tenant_id"
    legacy_balance: str = "balance"
    entries: str = "ledger_entries"
    entry_wallet: str = "wallet_id"
    entry_tenant: str = "tenant_id"
    entry_amount: str = "amount"
    entry_type: str = "entry_type"
    entry_created_at: str = "created_at"
    backfill_entry_types: tuple[str, ...] = ("opening_balance", "adjustment")
    worst_offenders: int = 10


@dataclass(frozen=True)
class TenantFigures:
    tenant: str
    wallets: int
    mismatched: int
    abs_difference: Decimal
    worst: tuple[tuple[int, Decimal, Decimal], ...]  # (wallet id, legacy, ledger)


def _mismatch_sql(tables: LedgerTables, quote: object, scoped: bool) -> str:
    q = quote  # the dialect's identifier quoting
    assert callable(q)
    w, e = q(tables.wallets), q(tables.entries)
    wid, wten, bal = q(tables.wallet_id), q(tables.wallet_tenant), q(tables.legacy_balance)
    ewal, eten, amt = q(tables.entry_wallet), q(tables.entry_tenant), q(tables.entry_amount)
    wallet_scope = f"WHERE w.{wten} = ANY(:tenants)" if scoped else ""
    entry_scope = f"WHERE {eten} = ANY(:tenants)" if scoped else ""
    # One pass: the ledger summed per wallet, joined to every wallet, grouped by tenant. The
    # worst offenders ride along as a bounded array per tenant (only mismatched rows enter).
    return f"""
        WITH ledger AS (
            SELECT {ewal} AS wallet_id, sum({amt}) AS total FROM {e} {entry_scope} GROUP BY {ewal}
        ), compared AS (
            SELECT w.{wten} AS tenant, w.{wid} AS wallet_id, w.{bal} AS legacy,
                   coalesce(l.total, 0) AS ledger
            FROM {w} w LEFT JOIN ledger l ON l.wallet_id = w.{wid} {wallet_scope}
        )
        SELECT tenant::text AS tenant, count(*) AS wallets,
               count(*) FILTER (WHERE legacy <> ledger) AS mismatched,
               coalesce(sum(abs(legacy - ledger)) FILTER (WHERE legacy <> ledger), 0) AS abs_diff,
               (array_agg(ARRAY[wallet_id::numeric, legacy, ledger]
                          ORDER BY abs(legacy - ledger) DESC, wallet_id)
                FILTER (WHERE legacy <> ledger))[1:{int(tables.worst_offenders)}] AS worst
        FROM compared GROUP BY tenant ORDER BY tenant
    """


def tenant_figures(
    connection: Connection, tables: LedgerTables, tenants: Sequence[str] | None = None
) -> tuple[str, list[TenantFigures]]:
    """Per-tenant wallet and mismatch counts, with each tenant's worst offenders."""
    quote = connection.dialect.identifier_preparer.quote
    sql = _mismatch_sql(tables, quote, scoped=tenants is not None)
    params = {"tenants": list(tenants)} if tenants is not None else {}
    rows = connection.execute(text(sql), params).mappings().all()
    figures = [
        TenantFigures(
            tenant=row["tenant"],
            wallets=row["wallets"],
            mismatched=row["mismatched"],
            abs_difference=row["abs_diff"],
            worst=tuple((int(w[0]), w[1], w[2]) for w in row["worst"] or ()),
        )
        for row in rows
    ]
    return " ".join(sql.split()), figures


def check_no_mismatch(
    connection: Connection, tables: LedgerTables, tenants: Sequence[str] | None = None
) -> CheckResult:
    """Zero wallets whose legacy balance differs from the ledger sum (runbook 2.2 / 3.2)."""
    sql, figures = tenant_figures(connection, tables, tenants)
    scope = f"tenants {', '.join(tenants)}" if tenants is not None else "all tenants"
    wallets = sum(f.wallets for f in figures)
    mismatched = [f for f in figures if f.mismatched]
    worst = sorted(
        ((f.tenant, *w) for f in mismatched for w in f.worst),
        key=lambda row: (-abs(row[2] - row[3]), row[1]),
    )[: tables.worst_offenders]
    evidence = (
        Evidence("mismatch query (one statement)", sql),
        Evidence(
            "per tenant: wallets, mismatched, |difference|",
            "\n".join(
                f"{f.tenant}: {f.wallets}, {f.mismatched}, {f.abs_difference}" for f in figures
            )
            or "(no rows)",
        ),
    )
    if wallets == 0:
        return failed(
            Failure(
                f"No wallets found for {scope}: nothing was verified",
                expected="wallets to compare with the ledger",
                seen=f"0 wallets in {tables.wallets}",
                remedy="Check the target database and the [ledger] table names in the config.",
            ),
            *evidence,
        )
    if mismatched:
        total = sum(f.mismatched for f in mismatched)
        offenders = "\n".join(
            f"{tenant} wallet {wallet}: legacy {legacy} vs ledger {ledger}"
            for tenant, wallet, legacy, ledger in worst
        )
        return failed(
            Failure(
                f"{total} of {wallets} wallets differ from the ledger ({scope})",
                expected="every wallet's legacy balance equals its ledger sum",
                seen="per tenant: "
                + ", ".join(f"{f.tenant}={f.mismatched}" for f in mismatched)
                + f"\nworst offenders:\n{offenders}",
                remedy=(
                    "Run the OPS-01 backfill (dry run first) for the affected tenants: "
                    "`python -m backend.scripts.backfill_wallet_balances --dry-run --batch-size "
                    "1000`, then without --dry-run; if mismatches come back, shadow writes are "
                    "being lost: keep ledger_enforce_balance off and investigate."
                ),
            ),
            *evidence,
            Evidence("worst offenders", offenders),
        )
    return passed(f"{wallets} wallets in {len(figures)} tenants match the ledger", *evidence)


def last_backfill_write(connection: Connection, tables: LedgerTables) -> dt.datetime | None:
    """When the backfill last wrote a ledger entry (its entry types), if ever."""
    quote = connection.dialect.identifier_preparer.quote
    sql = (
        f"SELECT max({quote(tables.entry_created_at)}) FROM {quote(tables.entries)} "
        f"WHERE {quote(tables.entry_type)} = ANY(:types)"
    )
    value = connection.execute(text(sql), {"types": list(tables.backfill_entry_types)}).scalar()
    return value if isinstance(value, dt.datetime) else None


def check_enforce_after_backfill(
    enforce_flag: str, enforced_at: dt.datetime | None, backfilled_at: dt.datetime | None
) -> CheckResult:
    """Enforcement was not turned on before the backfill's last write."""
    evidence = Evidence(
        "times",
        f"{enforce_flag} turned on: {enforced_at or '(unknown)'}\n"
        f"last backfill write: {backfilled_at or '(never)'}",
    )
    if enforced_at is None or backfilled_at is None:
        return failed(
            Failure(
                "Cannot prove enforcement came after the backfill",
                expected=f"a change time for {enforce_flag} and backfill entries in the ledger",
                seen=f"{enforce_flag}: {enforced_at or 'no change time'}; "
                f"backfill entries: {backfilled_at or 'none'}",
                remedy="Run the OPS-01 backfill (step 2.2) before turning enforcement on.",
            ),
            evidence,
        )
    if enforced_at < backfilled_at:
        return failed(
            Failure(
                f"{enforce_flag} was turned on before the backfill finished",
                expected=f"{enforce_flag} on after the last backfill write",
                seen=f"on at {enforced_at.isoformat()}, "
                f"backfill wrote until {backfilled_at.isoformat()}",
                remedy=(
                    f"Turn {enforce_flag} off, verify step 2.2 (zero mismatches), then turn it "
                    "on again."
                ),
            ),
            evidence,
        )
    return passed(f"{enforce_flag} on after the backfill", evidence)
