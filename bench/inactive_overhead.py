"""What the installed plugin costs a suite that does not use it.

pytest on a one-test suite (no --phase) with the plugin loaded from its entry point, vs the
same run with `-p no:ledger_rollout`, each as a process (interpreter start, plugin loading,
collection, the test). Runs alternate so that load on the machine hits both alike. Prints
medians of BENCH_ROUNDS rounds and the ratio.
Budget: with plugin / without <= 1.05.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))  # short runs: more rounds for a stable median
WITHOUT = ["-p", "no:ledger_rollout"]


def run(folder: Path, extra: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    with_plugin: list[float] = []
    without: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "test_one.py").write_text("def test_one() -> None:\n    assert True\n")
        run(folder, [])  # warm the file cache and the bytecode of both runs
        for _ in range(ROUNDS):
            with_plugin.append(run(folder, []))
            without.append(run(folder, WITHOUT))
    loaded, unloaded = statistics.median(with_plugin), statistics.median(without)
    print(f"rounds: {ROUNDS} (medians)")
    print(f"pytest, one test, plugin installed:     {loaded:.3f} s")
    print(f"pytest, one test, -p no:ledger_rollout: {unloaded:.3f} s")
    print(f"ratio installed / not loaded:           {loaded / unloaded:.3f}")


if __name__ == "__main__":
    main()
