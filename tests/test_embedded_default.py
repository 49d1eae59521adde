"""`pytest --phase=stg-mig` with no target: a throwaway Postgres, the reference backend, a
sign-off report readable with scripts blocked, and no postmaster left behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import REPO


def postmasters(scratch: Path) -> set[int]:
    """Server processes of this test's own ephemeral clusters (their data dirs live under
    ``scratch``): servers of other runs on the machine are none of its business."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"postgres") and bytes(scratch) in b" ".join(cmdline):
            pids.add(int(proc.name))
    return pids


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Where the run's throwaway cluster lives (its TMPDIR): readable by the unprivileged
    user the server runs as."""
    folder = Path(tempfile.mkdtemp(prefix="embedded-run-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def run_embedded(reports: Path, scratch: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "--phase=stg-mig",
            f"--signoff-dir={reports}",
            "-p",
            "no:cacheprovider",
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(scratch)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def strip_scripts(html: str) -> str:
    return re.sub(r"<script\b.*?</script>", "", html, flags=re.S)


def test_embedded_default_passes_and_writes_the_signoff(tmp_path: Path, scratch: Path) -> None:
    process = run_embedded(tmp_path, scratch)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    assert re.search(
        r"ledger-rollout: phase=stg-mig target=local \(ephemeral\) db=ephemeral", output
    )
    (html,) = tmp_path.glob("stg-mig-local-*.html")
    (report,) = tmp_path.glob("stg-mig-local-*.json")
    (checksums,) = tmp_path.glob("stg-mig-local-*.sha256")
    data = json.loads(report.read_text())
    assert data["verdict"] == "PASS" and data["rehearsal"] is True
    # The migrations and the config are in this checkout: one entry, its commit recorded.
    (checkout,) = data["repositories"].values()
    assert list(data["repositories"]) == ["migrations and config"]
    assert checkout["root"] == str(REPO) and re.fullmatch(r"[0-9a-f]{40}", checkout["commit"])
    assert {s["id"]: s["outcome"] for s in data["steps"]} == dict.fromkeys(
        ("1.1", "1.2", "1.3", "1.4"), "passed"
    )
    env = data["environment"]
    assert (
        env["alembic current (after the upgrade)"]
        == "20251222_02_reconciliation_findings_unique_idx"
    )
    assert re.fullmatch(r"127\.0\.0\.1:\d+/ledger", env["database"])
    for line in checksums.read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest
    assert {line.split("  ")[1] for line in checksums.read_text().splitlines()} == {
        html.name,
        report.name,
    }
    static = strip_scripts(html.read_text())
    assert "Verdict: PASS" in static and "REHEARSAL" in static
    for step_id in ("1.1", "1.2", "1.3", "1.4"):
        assert f"<td>{step_id}</td>" in static
    assert (
        "uq_recon_provider_event_type: UNIQUE (provider, provider_event_id, finding_type)" in static
    )
    assert "server version" in static and "operator" in static
    assert "VERDICT: stg-mig on local (ephemeral): PASS" in output
    assert output.rstrip().splitlines()[-1].startswith("ledger-rollout verdict: stg-mig on local")
    assert not postmasters(scratch)


def test_ctrl_c_leaves_no_postmaster(tmp_path: Path, scratch: Path) -> None:
    process = run_embedded(tmp_path, scratch, "-o", "addopts=")
    deadline = time.monotonic() + 60
    while not postmasters(scratch):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no ephemeral server started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while postmasters(scratch) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not postmasters(scratch), output


@pytest.mark.parametrize("signum", [signal.SIGKILL])
def test_killed_run_leaves_no_postmaster(tmp_path: Path, scratch: Path, signum: int) -> None:
    process = run_embedded(tmp_path, scratch)
    deadline = time.monotonic() + 60
    while not postmasters(scratch):
        assert process.poll() is None
        assert time.monotonic() < deadline, "no ephemeral server started"
        time.sleep(0.05)
    process.send_signal(signum)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 15
    while postmasters(scratch) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not postmasters(scratch)
