"""The README's demo: the four phases in order on the embedded default, into one report
folder: stg-mig PASS, stg-roll PASS, prd-pilot GO, prd-ga PASS, each a REHEARSAL."""

from __future__ import annotations

from pathlib import Path

from .browser import visible_text
from .support import RunPhase, require_prometheus, write_config


def test_four_phases_in_order_rehearse_and_pass(tmp_path: Path, run_phase: RunPhase) -> None:
    require_prometheus()
    config = write_config(tmp_path, database="unused", extra=PILOT_AND_GA)
    reports = tmp_path / "reports"
    runs = {
        phase: run_phase(config, phase=phase, reports=reports)
        for phase in ("stg-mig", "stg-roll", "prd-pilot", "prd-ga")
    }
    for phase, run in runs.items():
        assert run.result.ret == 0, f"{phase}:\n{run.output}"
        data = run.json()
        assert data["verdict"] == "PASS" and data["rehearsal"] is True, phase
        assert "REHEARSAL" in run.artifact(".html").read_text()
    roll, pilot, ga = runs["stg-roll"], runs["prd-pilot"], runs["prd-ga"]
    assert "webhook 401 share 0.00% after the flip" in roll.step("2.3")["evidence"]
    assert "over-withdrawal 400 INSUFFICIENT_FUNDS" in roll.step("2.4")["evidence"]
    assert pilot.json()["decision"] == {"verdict": "GO", "dry_run": False}
    assert "-> GO" in pilot.output
    for run in (pilot, ga):  # production phases read through read-only sessions
        assert run.json()["environment"]["read-only session"] == "yes"
    assert "stg-roll sign-off" in pilot.json()["environment"]
    assert "prd-pilot sign-off" in ga.json()["environment"]
    # The GO as an approver reads it: the decision and the figures behind it, without scripts.
    text = " ".join(visible_text(pilot.artifact(".html"), scripts=False).split())
    assert "Verdict: PASS -> decision GO" in text
    assert "OPS-02 per pilot tenant" in text
    assert "t-001 insufficient_funds" in text and "t-001 webhook_401" in text


PILOT_AND_GA = """
[pilot]
tenants = ["t-001"]
control_tenants = ["t-002", "t-003"]

[ga]
waves = [["t-001"], ["t-002", "t-003"]]
"""
