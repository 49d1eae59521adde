"""STG-MIG on the embedded default vs the runbook's own commands as separate processes.

Baseline: runbook Phase 1 by hand against a running server at the baseline revision, each
command its own process: the 1.1 URL probe, `alembic current`, `alembic history`,
`alembic upgrade head`, psql `\\d` + the pg_constraint query, `alembic downgrade -1`,
`alembic upgrade head`.
Candidates: `pytest --phase=stg-mig` on the embedded default (Postgres start, baseline
migration and stop included), and the same suite against the baseline's server
(`--target=staging`). Prints medians of BENCH_ROUNDS rounds and the ratios.
Budget: embedded / runbook <= 0.5.
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
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.config import load_config
from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    start_ephemeral,
)

REPO = Path(__file__).resolve().parent.parent
BACKEND = REPO / "examples" / "reference_backend"
CHAIN = load_config(REPO / "rollout.toml").migrations.expected_chain
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
URL_PROBE = "import os; u=os.getenv('DATABASE_URL',''); print(u.split('@')[-1] if '@' in u else u)"
PSQL_CHECKS = (
    r"\d reconciliation_findings",
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE conrelid = 'reconciliation_findings'::regclass AND contype = 'u';",
)
Command = tuple[list[str], dict[str, str], Path]


def timed(commands: list[Command]) -> float:
    started = time.perf_counter()
    for argv, env, cwd in commands:
        subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def database_at_baseline(server: EphemeralServer, name: str) -> str:
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = make_url(server.url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.connect() as connection:
        AlembicProject(BACKEND / "alembic.ini").upgrade(connection, CHAIN[0])
    engine.dispose()
    return url


def write_config(folder: Path, server: EphemeralServer) -> Path:
    chain = ", ".join(f'"{rev}"' for rev in CHAIN)
    path = folder / "rollout.toml"
    path.write_text(
        f'[migrations]\nalembic_ini = "{BACKEND}/alembic.ini"\nexpected_chain = [{chain}]\n'
        '[[schema.unique]]\ntable = "reconciliation_findings"\n'
        'columns = ["provider", "provider_event_id", "finding_type"]\n'
        'name = "uq_recon_provider_event_type"\n'
        f'[targets.local]\nkind = "ephemeral"\nprovider = "local"\n'
        f'app_host = "local://"\napp_dir = "{BACKEND}"\n'
        f'[targets.staging]\nkind = "staging"\n'
        f'expect = {{ host = "{server.host}", database = "bench" }}\n'
        f'app_host = "local://"\napp_dir = "{BACKEND}"\n'
    )
    return path


def runbook_commands(url: str, env: dict[str, str]) -> list[Command]:
    alembic = [sys.executable, "-m", "alembic"]
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    psql = ["psql", libpq, "-X", "-q", *(arg for check in PSQL_CHECKS for arg in ("-c", check))]
    steps = [
        [sys.executable, "-c", URL_PROBE],
        [*alembic, "current"],
        [*alembic, "history"],
        [*alembic, "upgrade", "head"],
        psql,
        [*alembic, "downgrade", "-1"],
        [*alembic, "upgrade", "head"],
    ]
    return [(argv, env, BACKEND) for argv in steps]


def main() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    runbook: list[float] = []
    staging: list[float] = []
    embedded: list[float] = []
    with (
        start_ephemeral(EphemeralSettings(provider="local")) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        config = write_config(folder, server)
        for round_ in range(ROUNDS):
            url = database_at_baseline(server, "bench")
            runbook.append(timed(runbook_commands(url, {**env, "DATABASE_URL": url})))
            suite = [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--phase=stg-mig", f"--rollout-config={config}",
                f"--signoff-dir={folder / f'reports-{round_}'}",
            ]  # fmt: skip
            url = database_at_baseline(server, "bench")
            staging_env = {**env, "DATABASE_URL": url}
            staging.append(
                timed([([*suite, "--target=staging", "--release=bench"], staging_env, folder)])
            )
            embedded.append(timed([(suite, env, folder)]))
    runbook_s, staging_s, embedded_s = (statistics.median(x) for x in (runbook, staging, embedded))
    print(f"rounds: {ROUNDS} (medians)")
    print(f"runbook commands as separate processes (server running): {runbook_s:.2f} s")
    print(f"pytest --phase=stg-mig --target=staging (same server):    {staging_s:.2f} s")
    print(f"pytest --phase=stg-mig embedded (Postgres start included): {embedded_s:.2f} s")
    print(f"ratio staging / runbook:  {staging_s / runbook_s:.2f}")
    print(f"ratio embedded / runbook: {embedded_s / runbook_s:.2f}  (budget <= 0.5)")


if __name__ == "__main__":
    main()
