"""OPS-02 decision (runbook 3.3) for 10 vs 1,000 tenants, against a real Prometheus.

Each size gets its own Prometheus backfilled with the same per-tenant history (three hours at
one sample a minute: the reference service's series for withdrawals, webhooks and mismatches,
and the scrape target's `up`): 3 pilot tenants, the rest control tenants. The decision, with
the shipped policy, runs BENCH_ROUNDS times after one warm-up; medians are printed with the
number of PromQL queries, which must not depend on the tenant count.

Budget (issue 5, Scale): a prd-pilot run grows by at most 2x from 10 to 1,000 tenants. The
decision alone cannot: Prometheus reads every control tenant's series, so its time grows with
them while the query count stays fixed. The bench therefore also times the floor of any run, an
empty pytest session with the plugin loaded, and prints the run's ratio bounded with it:
(floor + decision at 1,000) / (floor + decision at 10), assuming the rest of the run does not
grow with the tenants.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pytest_ledger_rollout.checks.metrics import Decision, PrometheusClient, decide
from pytest_ledger_rollout.targets.prometheus_server import Series, start_prometheus

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SIZES = (10, 1000)
PILOTS = 3
FLIP = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
MINUTES = range(-120, 61)  # two hours before the flip, one after
TARGET = {"job": "ledger", "instance": "ledger:8000"}
WITHDRAWALS = "/wallets/{wallet_id}/withdrawals"
# Per minute: label set -> increment. Healthy traffic, the same in every tenant.
COUNTERS = [
    ("ledger_http_responses", {"route": WITHDRAWALS, "status": "201", "code": "OK"}, 99),
    (
        "ledger_http_responses",
        {"route": WITHDRAWALS, "status": "400", "code": "INSUFFICIENT_FUNDS"},
        1,
    ),
    ("ledger_webhook", {"outcome": "accepted"}, 99),
    ("ledger_webhook", {"outcome": "would_reject"}, 1),
    ("ledger_balance_mismatch", {}, 0),
]


def tenants(size: int) -> list[str]:
    return [f"t-{i:04d}" for i in range(1, size + 1)]


def history(size: int) -> list[Series]:
    at = [FLIP + timedelta(minutes=m) for m in MINUTES]
    series = [Series("up", "gauge", TARGET, [(t, 1.0) for t in at])]
    for tenant in tenants(size):
        series += [
            Series(family, "counter", {**TARGET, **labels, "tenant": tenant},
                   [(t, float(step * i)) for i, t in enumerate(at)])
            for family, labels, step in COUNTERS
        ]  # fmt: skip
    return series


def measure(size: int, workdir: Path) -> tuple[float, float, Decision]:
    names = tenants(size)
    with (
        start_prometheus(workdir, history=history(size)) as server,
        PrometheusClient(server.url, timeout=30) as client,
    ):

        def once() -> tuple[float, Decision]:
            started = time.perf_counter()
            decision = decide(
                client,
                names[:PILOTS],
                names[PILOTS:],
                dict.fromkeys(names[:PILOTS], FLIP),
                FLIP + timedelta(hours=1),
            )
            return time.perf_counter() - started, decision

        once()  # warm-up: Prometheus loads the blocks' index on first use
        runs = [once() for _ in range(ROUNDS)]
    return server.backfill_seconds, statistics.median(s for s, _ in runs), runs[-1][1]


def pytest_floor(empty: Path) -> float:
    """An empty pytest session with the plugin loaded: what every phase run costs at least."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(empty)]
    runs = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        subprocess.run(argv, cwd=empty, capture_output=True, check=False)  # exit 5: no tests
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    seconds: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        floor = pytest_floor(Path(tmp))
        for size in SIZES:
            backfill, median, decision = measure(size, Path(tmp) / str(size))
            assert decision.verdict == "GO", decision.reasons[:3]
            seconds[size] = median
            print(
                f"{size:>5} tenants: decision {median * 1000:.1f} ms (median of {ROUNDS}), "
                f"{decision.queries} PromQL queries, verdict {decision.verdict}; "
                f"backfill {backfill:.1f} s"
            )
    small, large = SIZES
    alone = seconds[large] / seconds[small]
    bound = (floor + seconds[large]) / (floor + seconds[small])
    print(f"ratio of the decision alone, {large} / {small} tenants: {alone:.2f}")
    print(f"floor of a pytest run (empty session, plugin loaded): {floor * 1000:.0f} ms")
    print(
        f"ratio of a prd-pilot run, {large} / {small} tenants, at most: {bound:.2f} (budget <= 2.0)"
    )


if __name__ == "__main__":
    main()
