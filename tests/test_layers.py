"""The layers of ARCHITECTURE.md hold: imports flow down only, with no cycle and no private
import across modules, and no pytest below the pytest layer. Each rule is attacked on a copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.layers import LAYERS, PACKAGE, layer_of, layering_problems, package_sources

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_keeps_its_layers() -> None:
    assert layering_problems(ROOT) == []


def test_every_module_belongs_to_a_layer_and_the_suites_are_seen() -> None:
    modules = package_sources(ROOT)
    assert f"{PACKAGE}.suites.stg_mig.test_stg_mig" in modules
    assert f"{PACKAGE}.checks.migrations" in modules
    assert all(layer_of(module) is not None for module in modules)
    assert [name for name, _ in LAYERS][-1] == "base"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for folder in (PACKAGE, "suites"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("*.pyc"))
    return tmp_path


def _append(root: Path, module_file: str, line: str) -> None:
    path = root / module_file
    path.write_text(path.read_text() + f"\n\ndef _injected() -> None:\n    {line}\n")


@pytest.mark.parametrize(
    ("module_file", "line", "problem"),
    [
        (
            f"{PACKAGE}/checks/schema.py",
            f"from {PACKAGE}.plugin.report import write_report",
            f"{PACKAGE}/checks/schema.py:",
        ),
        (
            f"{PACKAGE}/targets/connection.py",
            f"from {PACKAGE}.config import load_config",
            "targets layer imports pytest_ledger_rollout.config (config layer, above it)",
        ),
        (
            f"{PACKAGE}/results.py",
            f"from {PACKAGE}.phases import model",
            "base layer imports pytest_ledger_rollout.phases.model (phases layer, above it)",
        ),
        (f"{PACKAGE}/checks/ledger.py", "import pytest", "checks layer imports pytest"),
        (
            f"{PACKAGE}/checks/smoke.py",
            f"from {PACKAGE}.checks.ledger import _private_helper",
            f"imports private _private_helper of {PACKAGE}.checks.ledger",
        ),
    ],
    ids=["report-from-checks", "config-from-targets", "phase-from-base", "pytest", "private"],
)
def test_a_wrong_import_is_named_even_inside_a_function(
    copy: Path, module_file: str, line: str, problem: str
) -> None:
    _append(copy, module_file, line)
    problems = layering_problems(copy)
    # The copy was clean (test_the_package_keeps_its_layers): every problem is the injected one.
    assert problems, "the injected import went unnoticed"
    assert any(problem in found for found in problems), problems


def test_a_lazy_import_cycle_is_named(copy: Path) -> None:
    # checks.migrations imports checks.schema; schema importing migrations back closes a cycle.
    _append(copy, f"{PACKAGE}/checks/schema.py", f"from {PACKAGE}.checks import migrations")
    problems = layering_problems(copy)
    assert len(problems) == 1, problems
    assert problems[0].startswith("import cycle among:")
    assert f"{PACKAGE}.checks.migrations" in problems[0]
    assert f"{PACKAGE}.checks.schema" in problems[0]
