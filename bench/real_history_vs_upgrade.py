"""STG-MIG's embedded default on the longest corpus history vs plain `alembic upgrade head`.

History: mlflow-skinny 3.1.0's 30 revisions (tests/projects/mlflow: its own env.py; its base
schema made by its initial models' create_all, as `mlflow db upgrade` does).
Baseline: one process that creates the base schema and runs `alembic upgrade head` on an empty
database of a running server (what `mlflow db upgrade` does).
Candidate: `pytest --phase=stg-mig` on the embedded default, starting at the first revision:
Postgres start, the history walk (every revision fingerprinted, every downgrade replayed),
1.1-1.3 and stop included. Step 1.4 is waived (run: false): MLflow ships no downgrades, so it
fails by design, and the walk has already replayed every downgrade.
Prints medians of BENCH_ROUNDS rounds and the ratio. Budget: embedded / upgrade <= 2, passing.
"""

from __future__ import annotations

import json
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
from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    start_ephemeral,
)

REPO = Path(__file__).resolve().parent.parent
MLFLOW = REPO / "tests" / "projects" / "mlflow"
BASE_SCHEMA = f"{MLFLOW / 'base_schema.py'}:create"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
UPGRADE = """
import sys
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
sys.path.insert(0, sys.argv[2])
from base_schema import create
engine = create_engine(sys.argv[1])
with engine.begin() as connection:
    create(connection)
config = Config(sys.argv[3])
config.set_main_option("sqlalchemy.url", sys.argv[1].replace("%", "%%"))
command.upgrade(config, "head")
"""


def empty_database(server: EphemeralServer, name: str) -> str:
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return make_url(server.url).set(database=name).render_as_string(hide_password=False)


def write_config(folder: Path) -> Path:
    project = AlembicProject(MLFLOW / "alembic.ini", BASE_SCHEMA)
    chain = project.chain_to(project.heads()[0])
    (folder / "waivers.yml").write_text(
        '"1.4":\n  justification: "MLflow ships no downgrades"\n'
        "  expiration_date: 2099-12-31\n  approver: bench\n  run: false\n"
    )
    path = folder / "rollout.toml"
    path.write_text(
        f'[migrations]\nalembic_ini = "{MLFLOW / "alembic.ini"}"\n'
        f"expected_chain = {json.dumps(list(chain))}\n"
        f'base_schema = "{BASE_SCHEMA}"\n'
        '[[schema.unique]]\ntable = "experiments"\ncolumns = ["name"]\n'
        '[targets.local]\nkind = "ephemeral"\nprovider = "local"\n'
    )
    return path


def timed(argv: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    return time.perf_counter() - started, done


def main() -> None:
    upgrade: list[float] = []
    embedded: list[float] = []
    with (
        start_ephemeral(EphemeralSettings(provider="local")) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        config = write_config(folder)
        for round_ in range(ROUNDS):
            url = empty_database(server, "bench")
            argv = [sys.executable, "-c", UPGRADE, url, str(MLFLOW), str(MLFLOW / "alembic.ini")]
            seconds, done = timed(argv, folder)
            if done.returncode:
                sys.exit(f"plain alembic upgrade head failed:\n{done.stderr[-2000:]}")
            upgrade.append(seconds)
            suite = [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--phase=stg-mig", f"--rollout-config={config}",
                f"--waivers={folder / 'waivers.yml'}",
                f"--signoff-dir={folder / f'reports-{round_}'}",
            ]  # fmt: skip
            seconds, done = timed(suite, folder)
            if done.returncode:
                output = done.stdout + done.stderr
                sys.exit(f"the embedded default did not pass:\n{output[-3000:]}")
            embedded.append(seconds)
    upgrade_s, embedded_s = statistics.median(upgrade), statistics.median(embedded)
    print(f"history: mlflow-skinny 3.1.0, 30 revisions; rounds: {ROUNDS} (medians)")
    print(f"plain alembic upgrade head from the base schema (server running): {upgrade_s:.2f} s")
    print(f"pytest --phase=stg-mig embedded (Postgres start included), PASS:  {embedded_s:.2f} s")
    print(f"ratio embedded / upgrade: {embedded_s / upgrade_s:.2f}  (budget <= 2)")


if __name__ == "__main__":
    main()
