"""The testcontainers provider vs the local one: start-to-ready, and the whole stg-mig gate.

Start-to-ready: `start_ephemeral` until the server accepts the suite's password login, then
stop (container: create, initdb in the entrypoint, readiness probe; local: a copy of the
cached initdb and pg_ctl start). Gate: `pytest --phase=stg-mig` on an ephemeral target of each
provider, as a process (start, baseline migration, the suite, stop). Prints medians of
BENCH_ROUNDS rounds and the ratios container / local. Needs a Docker engine with the image
(BENCH_IMAGE, default the local build of scripts/postgres-image; DOCKER_HOST and the
TESTCONTAINERS_* variables as scripts/test exports them).
No budget: the container pays initdb on every start (measured 2.8-7 s vs 0.5-2.3 s).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from pytest_ledger_rollout.config import load_config
from pytest_ledger_rollout.targets.postgres import EphemeralSettings, start_ephemeral

REPO = Path(__file__).resolve().parent.parent
BACKEND = REPO / "examples" / "reference_backend"
CHAIN = load_config(REPO / "rollout.toml").migrations.expected_chain
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
IMAGE = os.environ.get("BENCH_IMAGE", "ledger-rollout/postgres:15-local")
PROVIDERS = {
    "local": EphemeralSettings(provider="local"),
    "testcontainers": EphemeralSettings(provider="testcontainers", image=IMAGE),
}


def start_to_ready(settings: EphemeralSettings) -> float:
    started = time.perf_counter()
    with start_ephemeral(settings) as server:
        engine = create_engine(server.url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return time.perf_counter() - started


def write_config(folder: Path) -> Path:
    chain = ", ".join(f'"{rev}"' for rev in CHAIN)
    targets = "".join(
        f'[targets.{name}]\nkind = "ephemeral"\nprovider = "{settings.provider}"\n'
        f'image = "{settings.image}"\napp_host = "local://"\napp_dir = "{BACKEND}"\n'
        for name, settings in PROVIDERS.items()
    )
    path = folder / "rollout.toml"
    path.write_text(
        f'[migrations]\nalembic_ini = "{BACKEND}/alembic.ini"\nexpected_chain = [{chain}]\n'
        '[[schema.unique]]\ntable = "reconciliation_findings"\n'
        'columns = ["provider", "provider_event_id", "finding_type"]\n'
        'name = "uq_recon_provider_event_type"\n' + targets
    )
    return path


def gate(config: Path, target: str, reports: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--phase=stg-mig",
         f"--rollout-config={config}", f"--target={target}", f"--signoff-dir={reports}"],
        cwd=config.parent, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    ready: dict[str, list[float]] = {name: [] for name in PROVIDERS}
    gates: dict[str, list[float]] = {name: [] for name in PROVIDERS}
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp))
        for round_ in range(ROUNDS):
            for name, settings in PROVIDERS.items():
                ready[name].append(start_to_ready(settings))
                gates[name].append(gate(config, name, Path(tmp) / f"reports-{round_}"))
    r_local, r_tc = (statistics.median(ready[n]) for n in PROVIDERS)
    g_local, g_tc = (statistics.median(gates[n]) for n in PROVIDERS)
    print(f"rounds: {ROUNDS} (medians); image {IMAGE}")
    print(f"start to ready, local binaries:          {r_local:.2f} s")
    print(f"start to ready, testcontainers:          {r_tc:.2f} s")
    print(f"pytest --phase=stg-mig, local:           {g_local:.2f} s")
    print(f"pytest --phase=stg-mig, testcontainers:  {g_tc:.2f} s")
    print(f"ratio start to ready, container / local: {r_tc / r_local:.2f}")
    print(f"ratio stg-mig gate, container / local:   {g_tc / g_local:.2f}")


if __name__ == "__main__":
    main()
