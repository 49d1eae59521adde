"""The users' workflow: what examples/ci/github-stg-mig.yml runs, run here against the real
Docker engine, in a fresh virtualenv and a backend repository laid out as its header says.

Its `pip install` lines run unchanged, offline: PIP_NO_INDEX and PIP_FIND_LINKS point pip at a
wheelhouse holding this checkout's wheel and, repacked from this test environment, the exact
distributions the gate and the backend need (same files and versions, not downloaded again).
pip still resolves and installs everything, console scripts included, into the new venv.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .container_engine import LOCAL_POSTGRES_IMAGE, containers_named, require_engine
from .support import CHAIN, REFERENCE_BACKEND, REPO

WORKFLOW = REPO / "examples" / "ci" / "github-stg-mig.yml"
PLUGIN = "pytest-ledger-rollout"
# A backend repository's own requirements (the reference backend's imports).
BACKEND_REQUIREMENTS = ["alembic>=1.13", "SQLAlchemy>=2.0", "psycopg[binary]>=3.1"]


def repack(dist: importlib.metadata.Distribution, folder: Path) -> None:
    """An installed distribution as a wheel again: its files and metadata; files outside
    site-packages (a binary in bin/) go back into the wheel's .data folder, and pip
    regenerates the console scripts from entry_points.txt."""
    wheel_info = dist.read_text("WHEEL") or ""
    tag = re.search(r"^Tag: (\S+)$", wheel_info, re.M)
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    path = folder / f"{name}-{dist.version}-{tag.group(1) if tag else 'py3-none-any'}.whl"
    generated = {entry.name for entry in dist.entry_points if entry.group == "console_scripts"}
    skipped = {"INSTALLER", "REQUESTED", "direct_url.json"}
    with zipfile.ZipFile(path, "w") as wheel:
        for file in dist.files or []:
            outside_site = file.parts[0] == ".."
            if "__pycache__" in file.parts or file.name in skipped:
                continue
            if outside_site and file.name in generated:
                continue
            arcname = str(file)
            if outside_site:
                outside = Path(file.locate()).resolve().relative_to(Path(sys.prefix).resolve())
                kind = "scripts" if outside.parts[0] == "bin" else "data"
                inside = outside.name if kind == "scripts" else str(outside)
                arcname = f"{name}-{dist.version}.data/{kind}/{inside}"
            wheel.write(file.locate(), arcname)


def requirement_closure(roots: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that ``roots`` need, extras and markers honoured."""
    found: dict[str, importlib.metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [Requirement(root) for root in roots]
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = found.setdefault(key[0], importlib.metadata.distribution(requirement.name))
        for text in dist.requires or []:
            needed = Requirement(text)
            extras = requirement.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
                pending.append(needed)
    return list(found.values())


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    # Built from a copy: setuptools writes build/ and egg-info beside the sources.
    source = tmp_path_factory.mktemp("source") / "checkout"
    local = ("*cache*", ".venv", ".git", "build", "*.egg-info", "reports")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*local))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--wheel-dir", str(folder), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    plugin = importlib.metadata.distribution(PLUGIN)
    roots = [r for r in plugin.requires or [] if "extra ==" not in r] + BACKEND_REQUIREMENTS
    for dist in requirement_closure(roots):
        repack(dist, folder)
    return folder


def documented_config(workflow: str, chain: tuple[str, ...]) -> str:
    """The rollout.toml the workflow's header tells a backend repo to commit."""
    header = workflow.split("beside alembic.ini:", 1)[1].split("\nname:", 1)[0]
    lines = [line.removeprefix("#").removeprefix("   ") for line in header.splitlines()]
    config = "\n".join(line for line in lines if line.strip()) + "\n"
    config = config.replace('["...", "<head revision>"]', str(list(chain)).replace("'", '"'))
    return re.sub(r'image = "[^"]*"', f'image = "{LOCAL_POSTGRES_IMAGE}"', config)


def run_steps(workflow: dict[str, Any]) -> list[str]:
    steps = workflow["jobs"]["stg-mig"]["steps"]
    return [step["run"] for step in steps if "run" in step]


def test_the_documented_workflow_passes_on_the_engine(wheelhouse: Path, tmp_path: Path) -> None:
    require_engine()
    text = WORKFLOW.read_text()
    repo = tmp_path / "repo"
    shutil.copytree(REFERENCE_BACKEND, repo / "backend", ignore=shutil.ignore_patterns("__py*"))
    (repo / "backend" / "requirements.txt").write_text("\n".join(BACKEND_REQUIREMENTS) + "\n")
    (repo / "rollout.toml").write_text(documented_config(text, CHAIN))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "CI_RUN_URL": "https://github.example/acme/backend/actions/runs/1",
    }
    # The engine, as scripts/test exports it (DOCKER_HOST, Ryuk off, the connection mode).
    env |= {k: v for k, v in os.environ.items() if k.startswith(("DOCKER_", "TESTCONTAINERS_"))}
    before = set(containers_named("ledger-rollout-pg-"))
    for script in run_steps(yaml.safe_load(text)):
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script],
            cwd=repo, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"$ {script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (venv / "bin" / "pytest").exists()  # installed by pip, not borrowed
    (report,) = (repo / "reports").glob("stg-mig-ci-*.json")
    data = json.loads(report.read_text())
    assert data["verdict"] == "PASS"
    assert data["environment"]["ephemeral provider"] == "testcontainers"
    assert set(containers_named("ledger-rollout-pg-")) <= before
