"""OPS-01 backfill: bring the ledger in line with the legacy wallet balances.

    python -m backend.scripts.backfill_wallet_balances [--dry-run] [--batch-size N] [--tenant ID]

For each wallet whose ledger sum differs from its legacy balance, one entry for the difference:
`opening_balance` (reference 'backfill:opening') if the wallet has none yet, else `adjustment`
(reference 'backfill:after-<last entry id>', unique per state of the wallet's ledger). Wallets
go in batches by id (keyset pagination); each batch is one INSERT ... SELECT in its own
transaction, with the batch's wallet rows locked so no balance moves under it. Interrupting
keeps the batches already committed; a rerun only finds what is still different, so a second
run changes nothing. --dry-run writes nothing (read-only transactions) and reports the same
figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from ..db import database_url, engine_for, masked

# The wallets of a batch whose ledger differs from the legacy balance, with the entry to add.
# LATERAL keeps the ledger read to an index probe per wallet of the batch, whatever the
# planner believes about a ledger_entries table that grows during the run.
_PLAN = """
    WITH differing AS (
        SELECT w.id AS wallet_id, w.tenant_id,
               w.balance - coalesce(e.total, 0) AS difference,
               e.has_opening IS TRUE AS has_opening,
               coalesce(e.last_entry, 0) AS last_entry
        FROM wallets w
        CROSS JOIN LATERAL (
            SELECT sum(amount) AS total, max(id) AS last_entry,
                   bool_or(entry_type = 'opening_balance') AS has_opening
            FROM ledger_entries WHERE wallet_id = w.id
        ) e
        WHERE w.id BETWEEN :first AND :last {tenant_filter}
          AND w.balance <> coalesce(e.total, 0)
    ), plan AS (
        SELECT wallet_id, tenant_id, difference AS amount,
               CASE WHEN has_opening THEN 'adjustment' ELSE 'opening_balance' END AS entry_type,
               CASE WHEN has_opening THEN 'backfill:after-' || last_entry
                    ELSE 'backfill:opening' END AS reference
        FROM differing
    )
"""
_DRY_RUN = _PLAN + "SELECT tenant_id, count(*), sum(amount) FROM plan GROUP BY tenant_id"
# ON CONFLICT: a concurrent run that planned the same entry already wrote it.
_WRITE = (
    _PLAN
    + """, written AS (
        INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type, reference)
        SELECT wallet_id, tenant_id, amount, entry_type, reference FROM plan
        ON CONFLICT ON CONSTRAINT uq_ledger_entry_ref DO NOTHING
        RETURNING tenant_id, amount
    )
    SELECT tenant_id, count(*), sum(amount) FROM written GROUP BY tenant_id
"""
)
_NEXT_BATCH = """
    WITH batch AS (
        SELECT id FROM wallets WHERE id > :after {tenant_filter} ORDER BY id LIMIT :size {lock}
    )
    SELECT min(id), max(id), count(*) FROM batch
"""


@dataclass
class Totals:
    batches: int = 0
    wallets: int = 0
    entries: Counter[str] = field(default_factory=Counter)
    amounts: dict[str, Decimal] = field(default_factory=dict)

    def add(self, tenant: str, entries: int, amount: Decimal) -> None:
        self.entries[tenant] += entries
        self.amounts[tenant] = self.amounts.get(tenant, Decimal(0)) + amount

    @property
    def total_entries(self) -> int:
        return sum(self.entries.values())

    @property
    def total_amount(self) -> Decimal:
        return sum(self.amounts.values(), Decimal(0))


@dataclass(frozen=True)
class Batch:
    first: int
    last: int
    wallets: int
    per_tenant: list[tuple[str, int, Decimal]]  # tenant, entries, net amount


def _batch(
    connection: Connection, after: int, size: int, tenant: str | None, dry_run: bool
) -> Batch | None:
    """The next batch of wallets after `after`, planned or written; None when none are left."""
    tenant_filter = "AND tenant_id = :tenant" if tenant else ""
    params = {"after": after, "size": size, "tenant": tenant}
    if dry_run:
        connection.execute(text("SET TRANSACTION READ ONLY"))
    # A batch is milliseconds of work; with ledger_entries growing under stale statistics the
    # planner's estimates get large enough to trigger JIT, which then costs 100+ ms per batch.
    connection.execute(text("SET LOCAL jit = off"))
    first, last, scanned = connection.execute(
        text(
            _NEXT_BATCH.format(
                tenant_filter=tenant_filter, lock="" if dry_run else "FOR NO KEY UPDATE"
            )
        ),
        params,
    ).one()
    if not scanned:
        return None
    statement = (_DRY_RUN if dry_run else _WRITE).format(
        tenant_filter=tenant_filter.replace("tenant_id", "w.tenant_id")
    )
    rows = connection.execute(text(statement), {**params, "first": first, "last": last}).all()
    return Batch(first, last, scanned, [(str(t), int(n), Decimal(a)) for t, n, a in rows])


def _verb(dry_run: bool) -> str:
    return "would insert" if dry_run else "inserted"


def backfill(engine: Engine, *, batch_size: int, tenant: str | None, dry_run: bool) -> Totals:
    totals = Totals()
    after = 0
    while True:
        with engine.begin() as connection:
            batch = _batch(connection, after, batch_size, tenant, dry_run)
        if batch is None:
            return totals
        after = batch.last
        totals.batches += 1
        totals.wallets += batch.wallets
        for name, entries, amount in batch.per_tenant:
            totals.add(name, entries, amount)
        entries = sum(n for _, n, _ in batch.per_tenant)
        amount = sum((a for _, _, a in batch.per_tenant), Decimal(0))
        print(
            f"batch {totals.batches}: wallets {batch.first}..{batch.last} "
            f"({batch.wallets} scanned), "
            f"{_verb(dry_run)} {entries} entries, net {amount:+}",
            flush=True,
        )


def _tenant_exists(engine: Engine, tenant: str) -> bool:
    with engine.connect() as connection:
        found = connection.execute(text("SELECT 1 FROM tenants WHERE id = :id"), {"id": tenant})
        return found.first() is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.scripts.backfill_wallet_balances",
        description="Bring the ledger in line with the legacy wallet balances (OPS-01).",
    )
    parser.add_argument("--dry-run", action="store_true", help="write nothing; report changes")
    parser.add_argument("--batch-size", type=int, default=1000, help="wallets per transaction")
    parser.add_argument("--tenant", help="only this tenant's wallets")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    url = database_url()
    engine = engine_for(url, pool_size=1)
    if args.tenant and not _tenant_exists(engine, args.tenant):
        print(f"no tenant {args.tenant} in {masked(url)}", file=sys.stderr)
        return 2
    mode = "dry run, nothing written" if args.dry_run else "writing"
    scope = f"tenant {args.tenant}" if args.tenant else "all tenants"
    print(f"backfill on {masked(url)}, {scope}, batch size {args.batch_size} ({mode})")
    started = time.perf_counter()
    totals = backfill(engine, batch_size=args.batch_size, tenant=args.tenant, dry_run=args.dry_run)
    engine.dispose()
    verb = _verb(args.dry_run)
    for name in sorted(totals.entries):
        entries, amount = totals.entries[name], totals.amounts[name]
        print(f"  tenant {name}: {verb} {entries} entries, net {amount:+}")
    print(
        f"total: {totals.wallets} wallets in {totals.batches} batches, {verb} "
        f"{totals.total_entries} entries, net {totals.total_amount:+}, "
        f"{len(totals.entries)} tenants, {time.perf_counter() - started:.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
