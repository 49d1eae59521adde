"""The sign-off as an approver sees it in headless Chromium, with scripts on and off: the
verdict before any pytest-html table, the REHEARSAL banner on rehearsals, every step with its
evidence, failures as Expected / Seen / What to do, and no traceback of the plugin's code."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from pathlib import Path

import pytest

from pytest_ledger_rollout.phases.model import PHASES

from .browser import visible_text
from .support import PhaseRun, RunPhase, ScenarioDb, write_config

PLUGIN_CODE = ("Traceback", "def check(self", "raise DodFailure", "site-packages", "fixtures.py:")


def assert_readable(run: PhaseRun, *, verdict: str, rehearsal: bool) -> dict[bool, str]:
    """The report's visible text with scripts on and off, after the common assertions."""
    html = run.artifact(".html")
    seen = {}
    for scripts in (True, False):
        text = visible_text(html, scripts=scripts)
        view = "scripts on" if scripts else "scripts off"
        verdict_at = text.find(f"Verdict: {verdict}")
        assert verdict_at >= 0, f"{view}: no verdict in\n{text}"
        # Nothing of pytest-html's before the verdict: its environment table is not shown at
        # all, its results table (drawn by script) only after the sign-off.
        assert "Python" not in text[:verdict_at] and "Platform" not in text[:verdict_at], view
        assert not re.search(r"^\s*Environment\s*$", text, re.MULTILINE), view
        results_at = text.find("Duration")
        assert results_at == -1 or results_at > text.find("Sign-off environment"), view
        if not scripts:
            assert "(Un)check the boxes" not in text, view
        banner = "REHEARSAL: ephemeral target, not a staging or production sign-off"
        if rehearsal:
            assert 0 <= text.find(banner) < text.find("Runbook checklist"), view
            assert "on staging" not in text, view
        else:
            assert banner not in text, view
        for step in run.json()["steps"]:
            assert f"{step['id']} {step['title']}" in " ".join(text.split()), (view, step["id"])
        for marker in PLUGIN_CODE:
            assert marker not in text, f"{view}: {marker!r} shown"
        seen[scripts] = text
    return seen


def test_a_passing_rehearsal_reads_as_one(tmp_path: Path, run_phase: RunPhase) -> None:
    config = write_config(tmp_path, database="unused")
    run = run_phase(config, release=None)
    assert run.result.ret == 0, run.output
    for text in assert_readable(run, verdict="PASS", rehearsal=True).values():
        flat = " ".join(text.split())
        assert "STG-MIG: verify migrations on a throwaway Postgres (REHEARSAL)" in flat
        assert "release rehearsal" in flat
        assert "passed test_upgrade_head" not in flat  # titles, not function names, are shown
        assert "`alembic upgrade head` finishes without error and current is head" in flat


def test_a_failure_reads_as_a_finding(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    scenario_db.upgrade("head")
    scenario_db.execute(
        "ALTER TABLE reconciliation_findings DROP CONSTRAINT uq_recon_provider_event_type"
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.json()["verdict"] == "FAIL"
    for text in assert_readable(run, verdict="FAIL", rehearsal=False).values():
        finding = text[text.find("has no UNIQUE constraint over") :]
        for heading in ("Expected", "Seen", "What to do"):
            assert heading in finding, heading
        assert finding.find("Expected") < finding.find("Seen") < finding.find("What to do")
        assert "release 2026.11.3" in " ".join(text.split())


def test_a_waived_step_reads_as_waived(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    scenario_db.upgrade("head")
    scenario_db.execute(
        "ALTER TABLE reconciliation_findings RENAME CONSTRAINT uq_recon_provider_event_type"
        " TO uq_other"
    )
    expires = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)).isoformat()
    waivers = tmp_path / "waivers.yml"
    waivers.write_text(
        "".join(
            textwrap.dedent(
                f"""
                "{step}":
                  justification: "INC-42: renamed by hand"
                  expiration_date: {expires}
                  approver: "j.doe (DBA lead)"
                  run: {run}
                """
            )
            for step, run in (("1.3", "true"), ("1.4", "false"))
        )
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", f"--waivers={waivers}", url=scenario_db.url)
    assert run.result.ret == 0, run.output
    for text in assert_readable(run, verdict="PASS", rehearsal=False).values():
        flat = " ".join(text.split())
        assert "waived (not run)" in flat
        assert "INC-42: renamed by hand (approved by j.doe (DBA lead)" in flat


@pytest.mark.parametrize("phase", ["prd-pilot"])
def test_step_titles_follow_the_target(phase: str) -> None:
    heading = PHASES[phase].heading
    assert heading("production") == "PRD-PILOT: pilot rollout on production (read-only)"
    assert "REHEARSAL" in heading("ephemeral")
