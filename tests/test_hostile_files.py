"""Hostile files: report names that try to leave the sign-off folder, and symlinks planted where
a report will be written."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path

import pytest

from pytest_ledger_rollout.phases.signoff import (
    place_staged,
    signoff_paths,
    staged_html,
    write_checksums,
    write_new,
)

from .support import RunPhase, ScenarioDb, write_config

STARTED = dt.datetime(2026, 11, 28, 14, 5, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "target", ["x/../../../escaped", "../../etc/cron.d/x", "/abs", "a\\b", "..", "t\0nul"]
)
def test_signoff_names_stay_inside_the_folder(tmp_path: Path, target: str) -> None:
    folder = tmp_path / "reports"
    paths = signoff_paths(folder, "prd-pilot", target, STARTED)
    for path in (paths.html, paths.json, paths.checksums):
        assert path.parent == folder.resolve()
        assert path.name.startswith("prd-pilot-")
        assert re.fullmatch(r"[A-Za-z0-9._-]+", path.name), path.name
    assert paths.json.name.endswith("-20261128T140512Z.json")


def test_sanitized_name_keeps_safe_characters(tmp_path: Path) -> None:
    paths = signoff_paths(tmp_path, "stg-mig", "x/../../../escaped", STARTED)
    assert paths.json.name == "stg-mig-x_.._.._.._escaped-20261128T140512Z.json"


def test_a_symlink_planted_at_the_report_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    report = tmp_path / "report.json"
    report.symlink_to(victim)
    with pytest.raises(FileExistsError, match="never overwrites"):
        write_new(report, b"{}")
    assert victim.read_text() == "precious"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(FileExistsError):
        write_new(dangling, b"{}")
    assert not (tmp_path / "would-be-created").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "report.json", "victim"]


def test_an_existing_report_is_never_overwritten(tmp_path: Path) -> None:
    sums = tmp_path / "run.sha256"
    sums.write_text("kept\n")
    with pytest.raises(FileExistsError):
        write_checksums([], sums)
    assert sums.read_text() == "kept\n"


def test_a_new_report_is_written_whole(tmp_path: Path) -> None:
    write_new(tmp_path / "run.json", b'{"ok": true}\n')
    assert (tmp_path / "run.json").read_bytes() == b'{"ok": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind


def test_staged_html_is_placed_without_following_a_planted_symlink(tmp_path: Path) -> None:
    final = tmp_path / "reports" / "run.html"
    staged = staged_html(final)
    assert staged.parent.parent == final.parent and staged.parent.stat().st_mode & 0o077 == 0
    staged.write_text("<html>report</html>")
    victim = tmp_path / "victim"
    final.symlink_to(victim)
    with pytest.raises(FileExistsError):
        place_staged(staged, final)
    assert not victim.exists() and not staged.parent.exists()
    final.unlink()
    staged = staged_html(final)
    staged.write_text("<html>report</html>")
    place_staged(staged, final)
    assert final.read_text() == "<html>report</html>" and not final.is_symlink()
    assert [p.name for p in final.parent.iterdir()] == ["run.html"]


XSS = "<img src=x onerror=alert(1)>"


def test_no_recorded_value_becomes_markup_in_the_html_report(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", f"--release={XSS}", url=scenario_db.url)
    page = run.artifact(".html").read_text()
    assert XSS not in page  # the static summary escapes what it shows
    blob = re.search(r'data-jsonblob="([^"]*)"', page)
    assert blob is not None
    environment = json.loads(html.unescape(blob.group(1)))["environment"]
    assert html.escape(XSS) in page  # shown once, as text, in the static sign-off
    # pytest-html inserts each value (and each item of a dict value) with innerHTML.
    inserted = [
        str(item)
        for value in environment.values()
        for item in (value.items() if isinstance(value, dict) else [value])
    ]
    assert not [value for value in inserted if "<" in value or ">" in value]


def test_a_run_never_writes_through_a_symlink_planted_at_its_report_name(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """Names carry the start second: a symlink is planted for every second the run may start."""
    reports, victim = tmp_path / "reports", tmp_path / "victim"
    reports.mkdir()
    victim.write_text("precious")
    now = dt.datetime.now(dt.UTC)
    for second in range(-2, 30):
        stamp = f"{now + dt.timedelta(seconds=second):%Y%m%dT%H%M%SZ}"
        (reports / f"stg-mig-staging-{stamp}.json").symlink_to(victim)
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url, reports=reports)
    assert "already exists (a file or a symlink): a sign-off never overwrites one" in run.output
    assert victim.read_text() == "precious"
