"""3.1: the pilot tenants are few and low-risk, judged in one statement over all tenants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import Quote
from pytest_ledger_rollout.checks.ledger import LedgerTables
from pytest_ledger_rollout.checks.tenants import (
    TenantTables,
    quote,
    run_sql,
)
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed

MAX_PILOTS = 3  # the runbook's 1 to 3 pilot tenants


@dataclass(frozen=True)
class RiskCriteria:
    """What makes a tenant low-risk enough to pilot; every limit is inclusive."""

    min_wallets: int = 1  # a pilot without wallets gives the 3.3 signals nothing to measure
    max_wallets: int = 10_000
    max_withdrawal_volume: Decimal = Decimal("100000")
    volume_days: int = 30
    # Rejected withdrawals were credited back: they are not money that left.
    volume_statuses: tuple[str, ...] = ("requested", "approved", "paid")
    max_open_findings: int = 0

    def describe(self) -> str:
        return (
            f"{self.min_wallets} to {self.max_wallets} wallets, withdrawals "
            f"({', '.join(self.volume_statuses)}) at most {self.max_withdrawal_volume} over the "
            f"last {self.volume_days} days, at most {self.max_open_findings} open reconciliation "
            "findings"
        )


@dataclass(frozen=True)
class TenantRisk:
    tenant: str
    known: bool  # the tenant exists in the tenants table
    wallets: int
    withdrawal_volume: Decimal
    open_findings: int
    breaches: tuple[str, ...]  # each criterion the tenant exceeds, with figure and limit

    @property
    def low_risk(self) -> bool:
        return self.known and not self.breaches

    def line(self) -> str:
        if not self.known:
            return f"{self.tenant}: no such tenant"
        figures = (
            f"{self.tenant}: {self.wallets} wallets, withdrawals {self.withdrawal_volume}, "
            f"{self.open_findings} open findings"
        )
        return f"{figures} -> " + ("; ".join(self.breaches) if self.breaches else "low risk")


def _risk_sql(ledger: LedgerTables, tables: TenantTables, q: Quote, *, ranked: bool) -> str:
    t, tid = q(tables.tenants), q(tables.tenant_id)
    if ranked:  # every tenant, the lowest-risk first, bounded
        listed = f"SELECT {tid}::text AS tenant, true AS known FROM {t}"
        scope = ""
        tail = "ORDER BY cardinality(breaches), open_findings, volume, wallets, tenant LIMIT :limit"
    else:  # the configured tenants, known or not
        listed = (
            f"SELECT p.tenant, t.{tid} IS NOT NULL AS known "
            f"FROM unnest(CAST(:tenants AS text[])) AS p(tenant) LEFT JOIN {t} t "
            f"ON t.{tid} = p.tenant"
        )
        scope = "AND {} = ANY(:tenants)"
        tail = "ORDER BY tenant"
    wten, w = q(ledger.wallet_tenant), q(ledger.wallets)
    xten, x = q(tables.withdrawal_tenant), q(tables.withdrawals)
    ften, f = q(tables.finding_tenant), q(tables.findings)
    # The breaches are worded here, once: the check and the ranking read the same judgement.
    return f"""
        WITH listed AS ({listed}),
        wallet_counts AS (
            SELECT {wten}::text AS tenant, count(*) AS n FROM {w}
            WHERE true {scope.format(wten)} GROUP BY {wten}
        ), volumes AS (
            SELECT {xten}::text AS tenant, sum({q(tables.withdrawal_amount)}) AS total FROM {x}
            WHERE {q(tables.withdrawal_created_at)} >= now() - make_interval(days => :days)
              AND {q(tables.withdrawal_status)} = ANY(:statuses) {scope.format(xten)}
            GROUP BY {xten}
        ), open_findings AS (
            SELECT {ften}::text AS tenant, count(*) AS n FROM {f}
            WHERE NOT {q(tables.finding_resolved)}
              AND {q(tables.finding_type)} <> ALL(:bookkeeping) {scope.format(ften)}
            GROUP BY {ften}
        ), figures AS (
            SELECT l.tenant, l.known, coalesce(wc.n, 0) AS wallets,
                   coalesce(v.total, 0) AS volume, coalesce(o.n, 0) AS open_findings
            FROM listed l
            LEFT JOIN wallet_counts wc ON wc.tenant = l.tenant
            LEFT JOIN volumes v ON v.tenant = l.tenant
            LEFT JOIN open_findings o ON o.tenant = l.tenant
        )
        SELECT * FROM (
            SELECT *, array_remove(ARRAY[
                CASE WHEN wallets < :min_wallets
                     THEN format('%s wallets < min %s', wallets, :min_wallets) END,
                CASE WHEN wallets > :max_wallets
                     THEN format('%s wallets > max %s', wallets, :max_wallets) END,
                CASE WHEN volume > :max_volume
                     THEN format('withdrawals %s in %s days > max %s', volume, :days, :max_volume)
                     END,
                CASE WHEN open_findings > :max_findings
                     THEN format('%s open findings > max %s', open_findings, :max_findings) END
            ], NULL) AS breaches
            FROM figures
        ) judged
        {tail}
    """


def _risks(
    connection: Connection,
    ledger: LedgerTables,
    tables: TenantTables,
    criteria: RiskCriteria,
    scope: dict[str, Any],  # {"tenants": [...]} for those tenants, {"limit": n} for a ranking
) -> tuple[str, list[TenantRisk]]:
    sql = _risk_sql(ledger, tables, quote(connection), ranked="limit" in scope)
    shown, rows = run_sql(
        connection,
        sql,
        **scope,
        days=criteria.volume_days,
        statuses=list(criteria.volume_statuses),
        bookkeeping=list(tables.bookkeeping_findings),
        min_wallets=criteria.min_wallets,
        max_wallets=criteria.max_wallets,
        max_volume=criteria.max_withdrawal_volume,
        max_findings=criteria.max_open_findings,
    )
    risks = [
        TenantRisk(
            tenant=row["tenant"],
            known=row["known"],
            wallets=row["wallets"],
            withdrawal_volume=row["volume"],
            open_findings=row["open_findings"],
            breaches=tuple(row["breaches"]),
        )
        for row in rows
    ]
    return shown, risks


def rank_candidates(
    connection: Connection,
    ledger: LedgerTables,
    tables: TenantTables,
    criteria: RiskCriteria,
    limit: int = 10,
) -> tuple[str, list[TenantRisk]]:
    """The ``limit`` lowest-risk tenants with their figures: those meeting every criterion
    first, then fewest open findings, lowest withdrawal volume, fewest wallets."""
    return _risks(connection, ledger, tables, criteria, {"limit": limit})


def check_pilot_tenants(
    connection: Connection,
    ledger: LedgerTables,
    tables: TenantTables,
    criteria: RiskCriteria,
    pilots: Sequence[str],
) -> CheckResult:
    """3.1: 1 to 3 pilot tenants, each exists and is low-risk by ``criteria``."""
    sql, risks = _risks(connection, ledger, tables, criteria, {"tenants": list(pilots)})
    evidence = (
        Evidence("risk figures query (one statement)", sql),
        Evidence(
            "pilot tenants: figures and criteria",
            "\n".join(r.line() for r in risks) + f"\ncriteria: {criteria.describe()}",
        ),
    )
    problems = [r.line() for r in risks if not r.low_risk]
    if not 1 <= len(pilots) <= MAX_PILOTS:
        problems.insert(
            0, f"{len(pilots)} pilot tenants configured: {', '.join(pilots) or '(none)'}"
        )
    if problems:
        return failed(
            Failure(
                "The pilot tenants are not 1 to 3 existing low-risk tenants",
                expected=f"1 to {MAX_PILOTS} pilot tenants, each existing, each with "
                + criteria.describe(),
                seen="\n".join(problems),
                remedy=(
                    "Choose 1 to 3 low-risk tenants as the pilot in the rollout config; the "
                    "candidate ranking lists the lowest-risk tenants with their figures."
                ),
            ),
            *evidence,
        )
    return passed(f"{len(pilots)} low-risk pilot tenants: {', '.join(pilots)}", *evidence)


def candidates_report(
    connection: Connection,
    ledger: LedgerTables,
    tables: TenantTables,
    criteria: RiskCriteria,
    limit: int,
) -> CheckResult:
    """The lowest-risk tenants, ranked with their figures, to help choose the pilots (3.1)."""
    sql, ranked = rank_candidates(connection, ledger, tables, criteria, limit)
    listing = "\n".join(f"{rank}. {risk.line()}" for rank, risk in enumerate(ranked, 1))
    return passed(
        f"{len(ranked)} lowest-risk candidate(s): "
        + ", ".join(risk.tenant for risk in ranked if risk.low_risk),
        Evidence("pilot candidates (one statement)", sql),
        Evidence(f"lowest-risk tenants ({criteria.describe()})", listing or "(no tenants)"),
    )
