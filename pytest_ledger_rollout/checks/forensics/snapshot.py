"""Fingerprint snapshots: the history's fingerprints in a JSON file, for places where no
ephemeral Postgres can start (a staging pod). Keyed by the hash of the migration scripts; a
snapshot of other scripts is stale and refused."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pytest_ledger_rollout.checks.fingerprint import Fingerprint
from pytest_ledger_rollout.checks.forensics.history import (
    DowngradeProof,
    History,
    fingerprint_history,
    scripts_sha256,
)
from pytest_ledger_rollout.checks.forensics.preflight import ForensicsConfig
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.targets.postgres import EphemeralSettings, start_ephemeral

FORMAT = 2  # 2: each downgrade proof is {holds, detail}


class StaleSnapshot(ValueError):
    """The snapshot does not belong to these migration scripts (or cannot be read)."""


def save_snapshot(history: History, path: Path) -> None:
    data = {
        "format": FORMAT,
        "scripts_sha256": history.scripts_sha256,
        "order": list(history.order),
        "parents": {rev: list(down) for rev, down in history.parents.items()},
        "fingerprints": {rev: fp.as_rows() for rev, fp in history.fingerprints.items()},
        "base": history.base.as_rows(),
        "downgrades": {rev: asdict(proof) for rev, proof in history.downgrades.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def load_snapshot(path: Path, project: AlembicProject) -> History:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise StaleSnapshot(f"{path}: format {data.get('format')!r}, expected {FORMAT}")
        history = History(
            scripts_sha256=str(data["scripts_sha256"]),
            order=tuple(data["order"]),
            parents={rev: tuple(down) for rev, down in data["parents"].items()},
            fingerprints={
                rev: Fingerprint.from_rows(rows) for rev, rows in data["fingerprints"].items()
            },
            base=Fingerprint.from_rows(data.get("base", [])),
            downgrades={
                rev: DowngradeProof(holds=bool(proof["holds"]), detail=str(proof["detail"]))
                for rev, proof in data.get("downgrades", {}).items()
            },
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise StaleSnapshot(f"{path}: cannot be read as a fingerprint snapshot ({exc})") from None
    current = scripts_sha256(project)
    if history.scripts_sha256 != current:
        raise StaleSnapshot(
            f"{path} was taken from other migration scripts (scripts sha256 "
            f"{history.scripts_sha256[:12]}, these are {current[:12]}): regenerate it with "
            "`python -m pytest_ledger_rollout snapshot`"
        )
    return history


# Fingerprints depend only on the scripts: one walk per process and scripts hash is enough,
# however many runs (pytester, a PRD phase after STG-MIG) ask for them.
_WALKED: dict[str, History] = {}


def history_for_run(
    project: AlembicProject,
    settings: ForensicsConfig,
    ephemeral: EphemeralSettings,
    own_server_url: str | None = None,
) -> History:
    """The history's fingerprints: from the configured snapshot (refused when stale), else by a
    walk on ``own_server_url`` (an ephemeral target's own server: scratch databases beside the
    target's), else on a separate throwaway server. Never on a staging or production server."""
    if settings.snapshot is not None and settings.snapshot.exists():
        return load_snapshot(settings.snapshot, project)
    key = scripts_sha256(project)
    if key not in _WALKED:
        if own_server_url is not None:
            _WALKED[key] = fingerprint_history(project, own_server_url)
        else:
            with start_ephemeral(ephemeral) as server:
                _WALKED[key] = fingerprint_history(project, server.url)
    return _WALKED[key]


def cached_history(project: AlembicProject) -> History | None:
    """The fingerprints this process already walked for these scripts (no new walk)."""
    return _WALKED.get(scripts_sha256(project))
