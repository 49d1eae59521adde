"""`python -m pytest_ledger_rollout.forensics snapshot [--rollout-config rollout.toml] [--out F]`:
walk the history on a throwaway Postgres and write the fingerprint snapshot ([forensics]
snapshot by default), for targets where no ephemeral Postgres can start."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..migrations import AlembicProject
from ..postgres import start_ephemeral
from .history import fingerprint_history
from .snapshot import save_snapshot, walk_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pytest_ledger_rollout.forensics")
    parser.add_argument("command", choices=["snapshot"])
    parser.add_argument("--rollout-config", type=Path, default=Path("rollout.toml"))
    parser.add_argument("--out", type=Path, help="default: [forensics] snapshot")
    args = parser.parse_args()
    config = load_config(args.rollout_config.resolve())
    out = args.out or config.forensics.snapshot
    if out is None:
        parser.error("give --out, or set [forensics] snapshot in the rollout config")
    project = AlembicProject.of(config.migrations)
    with start_ephemeral(walk_settings(config)) as server:
        history = fingerprint_history(project, server.url)
    save_snapshot(history, out)
    print(f"{out}: {len(history.fingerprints)} revisions, scripts {history.scripts_sha256[:12]}")


if __name__ == "__main__":
    main()
