"""Free when inactive: a pytest run without --phase loads the plugin's options and marker
only, never the libraries a phase run needs (they doubled a one-test run's time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# What a phase run imports and an inactive plugin must not.
HEAVY = ("sqlalchemy", "alembic", "testcontainers", "requests", "docker", "psycopg", "yaml")
# All of the package an inactive plugin loads: the hook module and what it registers from.
LIGHT = {
    "pytest_ledger_rollout",
    "pytest_ledger_rollout.plugin",
    "pytest_ledger_rollout.plugin.options",
    "pytest_ledger_rollout.phases",
    "pytest_ledger_rollout.phases.model",
    "pytest_ledger_rollout.targets",
    "pytest_ledger_rollout.targets.kinds",
}

LOADED_PROBE = f"""
import json
import sys

HEAVY = {HEAVY!r}


def test_loaded() -> None:
    heavy = sorted({{m for m in sys.modules if m.split(".")[0] in HEAVY}})
    ours = sorted(m for m in sys.modules if m.split(".")[0] == "pytest_ledger_rollout")
    print("LOADED", json.dumps({{"heavy": heavy, "ours": ours}}))
"""


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _loaded(output: str) -> dict[str, list[str]]:
    line = next(line for line in output.splitlines() if line.startswith("LOADED "))
    loaded: dict[str, list[str]] = json.loads(line.removeprefix("LOADED "))
    return loaded


def test_a_run_without_phase_imports_no_heavy_library(tmp_path: Path) -> None:
    (tmp_path / "test_probe.py").write_text(LOADED_PROBE)
    run = _pytest(tmp_path, "-s", "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    loaded = _loaded(run.stdout)
    assert loaded["heavy"] == []
    ours = set(loaded["ours"])
    assert "pytest_ledger_rollout.plugin" in ours  # loaded from its entry point
    assert ours <= LIGHT, sorted(ours - LIGHT)


def test_the_hook_module_alone_imports_no_heavy_library() -> None:
    probe = (
        "import sys, pytest_ledger_rollout.plugin; "
        f"print(sorted({{m for m in sys.modules if m.split('.')[0] in {HEAVY!r}}}))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_help_keeps_the_option_group(tmp_path: Path) -> None:
    run = _pytest(tmp_path, "--help")
    assert run.returncode == 0, run.stderr
    assert "ledger rollout definition-of-done gates:" in run.stdout
    assert "--phase=PHASE" in run.stdout
