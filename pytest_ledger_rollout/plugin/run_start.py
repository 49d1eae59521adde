"""A phase run's start: its phase, config, target and sign-off paths read and checked
before anything connects, as the run's state."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import tempfile
from pathlib import Path

import pytest

from pytest_ledger_rollout import __version__
from pytest_ledger_rollout.config import ConfigError, load_config
from pytest_ledger_rollout.masking import Scrubber, mask_url
from pytest_ledger_rollout.phases.model import (
    PHASES,
    Phase,
)
from pytest_ledger_rollout.phases.opened_target import (
    resolve_target,
)
from pytest_ledger_rollout.phases.provenance import RepositoryState, repository_state
from pytest_ledger_rollout.phases.signoff import (
    RunRecord,
    sha256_file,
    signoff_paths,
)
from pytest_ledger_rollout.phases.waivers import WaiverError, load_waivers
from pytest_ledger_rollout.plugin.options import option, rollout_config_path
from pytest_ledger_rollout.plugin.state import (
    RunState,
)
from pytest_ledger_rollout.targets.declared import TargetError
from pytest_ledger_rollout.targets.kinds import EPHEMERAL

SUITES_PACKAGE = "pytest_ledger_rollout.suites"


def new_run_state(config: pytest.Config, phase_name: str) -> RunState:
    phase = PHASES.get(phase_name)
    if phase is None:
        raise pytest.UsageError(f"unknown --phase {phase_name!r}: use one of {', '.join(PHASES)}")
    if not suite_dir(phase).is_dir():
        raise pytest.UsageError(
            f"phase {phase.name} has no checks in pytest-ledger-rollout {__version__}: "
            "nothing can decide it yet"
        )
    config_path = rollout_config_path(config)
    try:
        rollout = load_config(config_path)
    except ConfigError as exc:
        raise pytest.UsageError(f"invalid rollout config: {exc}") from None
    target_name, _ = option(config, "rollout_target")
    try:
        target = resolve_target(rollout, phase, target_name, os.environ)
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None
    scrubber = Scrubber()
    # URLs of the config that may carry user:password@ besides the database's.
    for url in (
        target.url,
        target.config.service_url,
        target.config.prometheus_url,
        rollout.flags.source.url,
    ):
        scrubber.register_url(url)
    signoff_value, signoff_base = option(config, "rollout_signoff_dir")
    assert signoff_value is not None
    started = dt.datetime.now(dt.UTC)
    folder = (signoff_base / signoff_value).resolve()
    paths = signoff_paths(folder, phase.name, target.name, started)
    record = RunRecord(
        phase=phase,
        target=target.name,
        target_kind=target.kind,
        scrubber=scrubber,
        head=rollout.migrations.expected_chain[-1],
        operator=_operator(),
        started=started,
        repositories=_repositories(rollout.migrations.alembic_ini, config_path),
    )
    record.environment.update(
        {
            "phase": phase.name,
            "target": f"{target.name} ({target.kind})",
            "database": mask_url(target.url) if target.url else "ephemeral (started for this run)",
            "config": f"{config_path.name} sha256:{rollout.sha256[:12]}",
            "alembic head (expected)": rollout.migrations.expected_chain[-1],
            "plugin version": __version__,
            "operator": record.operator,
            "started (UTC)": started.isoformat(timespec="seconds"),
            **{
                f"{name} repository": state.describe() if state else "not a git checkout"
                for name, state in record.repositories.items()
            },
        }
    )
    if os.environ.get("CI_RUN_URL") or os.environ.get("GITHUB_RUN_ID"):
        record.environment["CI run"] = _ci_run_url()
    _load_waivers(config, record, started.date())
    release, _ = option(config, "rollout_release")
    if not release and target.kind != EPHEMERAL:
        raise pytest.UsageError(
            f"target {target.name!r} is a {target.kind} target: its sign-off must name the "
            "release it signs off; pass --release=RC (e.g. --release=2026.11.3) or set "
            "rollout_release in the ini file"
        )
    record.release = release or "rehearsal"
    record.environment["release"] = record.release
    predecessor, predecessor_base = option(config, "rollout_predecessor")
    state = RunState(rollout, phase, target, record, scrubber, paths)
    if predecessor:
        state.predecessor = (predecessor_base / predecessor).resolve()
    candidates, _ = option(config, "rollout_pilot_candidates")
    if candidates is not None:
        if not candidates.isdigit() or int(candidates) < 1:
            raise pytest.UsageError(
                f"--pilot-candidates must be a positive number, not {candidates!r}"
            )
        state.pilot_candidates = int(candidates)
    _require_writable(folder)
    return state


def _repositories(alembic_ini: Path, config_path: Path) -> dict[str, RepositoryState | None]:
    """The checkouts holding the migrations and the config; one entry when they are one."""
    migrations = repository_state(alembic_ini.parent)
    if migrations is not None and config_path.is_relative_to(migrations.root):
        return {"migrations and config": migrations}  # one checkout: git asked once
    return {"migrations": migrations, "config": repository_state(config_path.parent)}


def _require_writable(folder: Path) -> None:
    """The sign-off folder is proven writable before anything touches a database (without
    creating it: a run refused for another reason leaves nothing behind)."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif existing != folder:
        if not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} does not let this user create {folder.name}"
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem is not None:
        raise pytest.UsageError(
            f"the sign-off folder {folder} cannot be written ({problem}): "
            "pass --signoff-dir a folder you can write to"
        )


def _load_waivers(config: pytest.Config, record: RunRecord, today: dt.date) -> None:
    """The waiver file onto the record; its hash goes in the environment, since it changes
    what the verdict means."""
    value, base = option(config, "rollout_waivers")
    if value is None:
        return
    path = (base / value).resolve()
    try:
        record.waivers = load_waivers(path, record.phase, today)
    except WaiverError as exc:
        raise pytest.UsageError(f"invalid waiver file: {exc}") from None
    record.environment["waivers"] = f"{path.name} sha256:{sha256_file(path)[:12]}"


def suite_dir(phase: Phase) -> Path:
    import importlib

    suites = importlib.import_module(SUITES_PACKAGE)
    return Path(str(suites.__file__)).parent / phase.suite


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _ci_run_url() -> str:
    if os.environ.get("CI_RUN_URL"):
        return os.environ["CI_RUN_URL"]
    server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
    repository = os.environ.get("GITHUB_REPOSITORY", "")
    return f"{server}/{repository}/actions/runs/{os.environ['GITHUB_RUN_ID']}"
