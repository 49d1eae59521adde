"""The 2.2 mismatch check vs a hand-written single SQL statement, and the OPS-01 backfill vs
one set-based statement, on BENCH_WALLETS wallets (default 1M) with 10 ledger entries each.

Budgets: mismatch check <= 1.2x the hand-written count, with flat Python memory (peak RSS of
a process running the check on 10% and on 100% of the wallets). The backfill's throughput is
printed against one INSERT ... SELECT and one UPDATE of the same rows (no budget: a report).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.checks.ledger import LedgerTables, check_no_mismatch
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.targets.postgres import EphemeralSettings, start_ephemeral

REPO = Path(__file__).resolve().parent.parent
BACKEND = REPO / "examples" / "reference_backend"
WALLETS = int(os.environ.get("BENCH_WALLETS", "1000000"))
ENTRIES_PER_WALLET = 10
TENANTS = 100
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
HANDWRITTEN = """
    SELECT count(*) FROM wallets w
    LEFT JOIN (SELECT wallet_id, sum(amount) AS total FROM ledger_entries GROUP BY wallet_id) l
      ON l.wallet_id = w.id
    WHERE w.balance <> coalesce(l.total, 0)
"""


def database(server_url: str, name: str) -> str:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.connect() as connection:
        AlembicProject(BACKEND / "alembic.ini").upgrade(connection, "head")
    engine.dispose()
    return url


def seed(url: str, wallets: int, with_entries: bool) -> None:
    per_tenant = wallets // TENANTS
    statements = [
        "INSERT INTO tenants (id, name) SELECT 't-' || lpad(t::text, 3, '0'), 'tenant ' || t"
        f" FROM generate_series(1, {TENANTS}) t",
        "INSERT INTO wallets (tenant_id, owner_ref, balance)"
        " SELECT 't-' || lpad(t::text, 3, '0'), 'u-' || i,"
        f" CASE WHEN {'true' if with_entries else 'false'} THEN i % 1000 * {ENTRIES_PER_WALLET}"
        " ELSE i % 1000 END"
        f" FROM generate_series(1, {TENANTS}) t, generate_series(1, {per_tenant}) i",
    ]
    if with_entries:
        statements.append(
            "INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type, reference)"
            " SELECT w.id, w.tenant_id, w.balance / " + str(ENTRIES_PER_WALLET) + ", 'deposit',"
            " 'seed-' || n FROM wallets w,"
            f" generate_series(1, {ENTRIES_PER_WALLET}) n"
        )
        # A few wallets off the ledger, so both statements have something to find.
        statements.append("UPDATE wallets SET balance = balance + 1 WHERE id % 100000 = 7")
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def median_seconds(run: object, rounds: int = ROUNDS) -> float:
    assert callable(run)
    run()  # warm the cache: both sides are measured hot
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_rss_mib(url: str, tenants: list[str] | None) -> float:
    """Peak RSS of a fresh process that runs only the check (scoped to ``tenants``)."""
    script = (
        "import resource, sys; from sqlalchemy import create_engine;"
        "from pytest_ledger_rollout.checks.ledger import LedgerTables, check_no_mismatch;"
        "engine = create_engine(sys.argv[1]); tenants = sys.argv[2:] or None;"
        "c = engine.connect(); check_no_mismatch(c, LedgerTables(), tenants);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, url, *(tenants or [])],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(out.stdout.strip()) / 1024


def main() -> None:
    with start_ephemeral(EphemeralSettings(provider="local")) as server:
        url = database(server.url, "bench_ledger")
        began = time.perf_counter()
        seed(url, WALLETS, with_entries=True)
        print(f"seeded {WALLETS} wallets, {WALLETS * ENTRIES_PER_WALLET} entries in "
              f"{time.perf_counter() - began:.1f} s")  # fmt: skip
        engine = create_engine(url)
        with engine.connect() as connection:
            found = connection.execute(text(HANDWRITTEN)).scalar_one()
            result = check_no_mismatch(connection, LedgerTables())
            assert not result.ok and f"{found} of {WALLETS}" in result.summary, result.summary
            hand = median_seconds(lambda: connection.execute(text(HANDWRITTEN)).scalar_one())
            ours = median_seconds(lambda: check_no_mismatch(connection, LedgerTables()))
        engine.dispose()
        tenth = [f"t-{t:03d}" for t in range(1, TENANTS // 10 + 1)]
        rss_small, rss_full = peak_rss_mib(url, tenth), peak_rss_mib(url, None)
        print(f"hand-written count: {hand:.2f} s; mismatch check: {ours:.2f} s")
        print(f"ratio mismatch check / hand-written: {ours / hand:.2f}  (budget <= 1.2)")
        print(f"peak RSS of the check: {rss_small:.0f} MiB on 10% of tenants, "
              f"{rss_full:.0f} MiB on all ({rss_full / rss_small:.2f}x)")  # fmt: skip

        backfill_url = database(server.url, "bench_backfill")
        seed(backfill_url, WALLETS, with_entries=False)
        env = {**os.environ, "DATABASE_URL": backfill_url}
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "backend.scripts.backfill_wallet_balances", "--batch-size",
             "1000"], cwd=BACKEND, env=env, check=True, capture_output=True,
        )  # fmt: skip
        backfill = time.perf_counter() - began
        set_based_url = database(server.url, "bench_set_based")
        seed(set_based_url, WALLETS, with_entries=False)
        engine = create_engine(set_based_url)
        with engine.begin() as connection:
            began = time.perf_counter()
            connection.execute(
                text(
                    "INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type,"
                    " reference) SELECT id, tenant_id, balance, 'opening_balance',"
                    " 'backfill:opening' FROM wallets"
                )
            )
            insert = time.perf_counter() - began
            began = time.perf_counter()
            connection.execute(text("UPDATE wallets SET balance = balance"))
            update = time.perf_counter() - began
        engine.dispose()
        print(f"backfill of {WALLETS} wallets (batch 1000): {backfill:.1f} s "
              f"({WALLETS / backfill:,.0f} wallets/s)")  # fmt: skip
        print(f"one INSERT ... SELECT of the same rows: {insert:.1f} s "
              f"(backfill / insert = {backfill / insert:.2f})")  # fmt: skip
        print(f"one UPDATE of the same rows: {update:.1f} s (backfill / update = "
              f"{backfill / update:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
