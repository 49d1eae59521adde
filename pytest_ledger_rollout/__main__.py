"""`python -m pytest_ledger_rollout snapshot [--rollout-config FILE] [--out F]`:
walk the history on a throwaway Postgres and write the fingerprint snapshot ([forensics]
snapshot by default), for targets where no ephemeral Postgres can start."""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_ledger_rollout.checks.forensics.history import fingerprint_history
from pytest_ledger_rollout.checks.forensics.snapshot import save_snapshot
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.config import load_config
from pytest_ledger_rollout.targets.postgres import start_ephemeral


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pytest_ledger_rollout")
    parser.add_argument("command", choices=["snapshot"])
    parser.add_argument("--rollout-config", type=Path, default=Path("rollout.toml"))
    parser.add_argument("--out", type=Path, help="default: [forensics] snapshot")
    args = parser.parse_args()
    config = load_config(args.rollout_config.resolve())
    out = args.out or config.forensics.snapshot
    if out is None:
        parser.error("give --out, or set [forensics] snapshot in the rollout config")
    project = AlembicProject.of(config.migrations)
    with start_ephemeral(config.walk_settings()) as server:
        history = fingerprint_history(project, server.url)
    save_snapshot(history, out)
    print(f"{out}: {len(history.fingerprints)} revisions, scripts {history.scripts_sha256[:12]}")


if __name__ == "__main__":
    main()
