"""The step model is the law: order and gates come from it, whatever selection, plugin,
interruption or second run happens; a step passes only when its required checks ran and passed.
Each test attacks one guarantee on a real Postgres and checks the database was left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_ledger_rollout.phases.model import PHASES, Role

from .support import CHAIN, HEAD, RELEASE, REPO, PhaseRun, RunPhase, ScenarioDb, write_config

STG_MIG = PHASES["stg-mig"]
ORDER = [check.name for step in STG_MIG.steps for check in step.checks]


def ran_checks(run_json: dict[str, object]) -> list[str]:
    steps = run_json["steps"]
    assert isinstance(steps, list)
    return [c["check"] for s in steps for c in s["checks"] if c["outcome"] != "skipped"]


def test_every_packaged_suite_function_is_in_the_model_and_back() -> None:
    """The model and the suites name the same checks, so nothing runs unplanned."""
    suites = REPO / "suites"
    for phase in PHASES.values():
        declared = {check.name for step in phase.steps for check in step.checks}
        found = {
            line.split("(")[0].removeprefix("def ")
            for path in (suites / phase.suite).glob("test_*.py")
            for line in path.read_text().splitlines()
            if line.startswith("def test_")
        }
        assert declared == found, phase.name


def test_actions_come_after_their_preflights_in_every_step() -> None:
    for phase in PHASES.values():
        for step in phase.steps:
            roles = [check.role for check in step.checks]
            if Role.ACTION in roles:
                assert Role.PREFLIGHT in roles[: roles.index(Role.ACTION)], step.id


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_random_order_plugin_cannot_reorder_the_phase(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, seed: int
) -> None:
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(
        config, "--target=staging", "-p", "randomly", f"--randomly-seed={seed}",
        url=scenario_db.url,
    )  # fmt: skip
    assert run.result.ret == 0, run.output
    ran = ran_checks(run.json())
    assert ran == [name for name in ORDER if name in ran]
    assert scenario_db.current() == (HEAD,)


def test_a_plugin_reordering_after_collection_cannot_reorder_the_phase(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, pytester: pytest.Pytester
) -> None:
    """A wrapper that reverses the items after every other hook: the run still follows the
    model (its order is imposed again when the run starts)."""
    pytester.makepyfile(
        reverser=textwrap.dedent(
            """
            import pytest

            @pytest.hookimpl(wrapper=True)
            def pytest_collection_modifyitems(items):
                yield
                items.reverse()
            """
        )
    )
    pytester.syspathinsert()
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", "-p", "reverser", url=scenario_db.url)
    assert run.result.ret == 0, run.output
    assert ran_checks(run.json()) == [name for name in ORDER if name in ran_checks(run.json())]
    records = [c["check"] for s in run.json()["steps"] for c in s["checks"]]
    assert records.index("test_preflight_unique_holds_on_todays_rows") < records.index(
        "test_upgrade_head"
    )


@pytest.mark.parametrize(
    "selection",
    [
        ("-k", "upgrade"),
        ("-k", "not preflight"),
        ("--deselect", "test_forensics.py::test_preflight_no_long_locks_on_large_tables"),
        ("--deselect", "test_forensics.py::test_schema_matches_claimed_revision"),
    ],
)
def test_a_selection_cannot_run_the_upgrade_without_its_preflights(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, selection: tuple[str, str]
) -> None:
    config = write_config(tmp_path, database=scenario_db.name)
    option, value = selection
    run = run_phase(config, "--target=staging", option, value, url=scenario_db.url)
    assert run.result.ret == 1, run.output
    assert run.json()["verdict"] == "INCOMPLETE"
    upgrade = next(c for c in run.step("1.2")["checks"] if c["check"] == "test_upgrade_head")
    assert upgrade["outcome"] == "skipped"
    assert upgrade["summary"].startswith("not attempted: ")
    assert scenario_db.current() == (CHAIN[0],)


def test_a_failed_step_1_1_stops_every_destructive_step(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """An expected chain naming revisions that do not exist: 1.1 fails, nothing is upgraded."""
    config = write_config(
        tmp_path, database=scenario_db.name, expected_chain=(CHAIN[0], "no_such_rev", "nor_this")
    )
    before = scenario_db.scalar("SELECT count(*) FROM pg_class")
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 1
    assert run.json()["verdict"] == "FAIL"
    assert run.step("1.1")["outcome"] == "failed"
    for step_id in ("1.2", "1.4"):
        step = run.step(step_id)
        assert step["outcome"] == "not run"
        assert step["evidence"] == "not attempted: 1.1 failed"
    assert scenario_db.current() == (CHAIN[0],)
    assert scenario_db.scalar("SELECT count(*) FROM pg_class") == before


def test_deselected_smoke_is_incomplete_and_exits_1(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", "-k", "not smoke", url=scenario_db.url)
    assert run.result.ret == 1, run.output
    assert run.json()["verdict"] == "INCOMPLETE"
    smoke = run.step("1.4")
    assert smoke["outcome"] == "not run"
    assert "test_downgrade_upgrade_smoke" in smoke["evidence"]
    assert "ledger-rollout verdict: stg-mig on staging (staging): INCOMPLETE" in run.output


def test_interrupted_run_signs_off_interrupted(
    scenario_db: ScenarioDb,
    tmp_path: Path,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C as 1.4's smoke starts: exit 2 and a sign-off that says INTERRUPTED, never PASS.
    (A subprocess: an in-process KeyboardInterrupt would stop this test run too.)"""
    pytester.makepyfile(
        ctrl_c=textwrap.dedent(
            """
            def pytest_runtest_call(item):
                if item.name == "test_downgrade_upgrade_smoke":
                    raise KeyboardInterrupt
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    monkeypatch.setenv("DATABASE_URL", scenario_db.url)
    config = write_config(tmp_path, database=scenario_db.name)
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        "--phase=stg-mig", "--target=staging", f"--rollout-config={config}",
        f"--signoff-dir={reports}", f"--release={RELEASE}", "-p", "ctrl_c",
    )  # fmt: skip
    run = PhaseRun(result, reports, "stg-mig")
    assert result.ret == pytest.ExitCode.INTERRUPTED, run.output
    data = run.json()
    assert data["verdict"] == "INTERRUPTED"
    assert data["interrupted"].startswith("interrupted (Ctrl-C")
    assert run.step("1.4")["outcome"] == "not run"
    assert "Verdict: INTERRUPTED" in run.artifact(".html").read_text()
    assert "ledger-rollout verdict: stg-mig on staging (staging): INTERRUPTED" in run.output


def test_a_teams_own_checks_never_replace_the_packaged_ones(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, pytester: pytest.Pytester
) -> None:
    """Four empty tests marked dod("1.1")..dod("1.4") do not make a PASS."""
    pytester.makepyfile(
        test_team=textwrap.dedent(
            """
            import pytest

            @pytest.mark.dod("1.1")
            def test_team_1_1(): pass

            @pytest.mark.dod("1.2", role="preflight")
            def test_team_1_2(): pass

            @pytest.mark.dod("1.3")
            def test_team_1_3(): pass

            @pytest.mark.dod("1.4")
            def test_team_1_4(): pass
            """
        )
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(
        config, "--target=staging", str(pytester.path / "test_team.py"), "-k", "team",
        url=scenario_db.url,
    )  # fmt: skip
    assert run.result.ret == 1, run.output
    assert run.json()["verdict"] == "INCOMPLETE"
    assert [s["outcome"] for s in run.json()["steps"]] == ["not run"] * 4
    assert scenario_db.current() == (CHAIN[0],)
    # With the packaged checks selected, the team's add to them: the phase passes.
    run = run_phase(
        config, "--target=staging", str(pytester.path / "test_team.py"), url=scenario_db.url
    )
    assert run.result.ret == 0, run.output
    team = [c for s in run.json()["steps"] for c in s["checks"] if c["check"] is None]
    assert [(c["name"], c["role"]) for c in team] == [
        ("test_team_1_1", "verification"),
        ("test_team_1_2", "preflight"),
        ("test_team_1_3", "verification"),
        ("test_team_1_4", "verification"),
    ]


def test_a_teams_failing_preflight_stops_the_upgrade(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        test_team=textwrap.dedent(
            """
            import pytest

            @pytest.mark.dod("1.2", role="preflight")
            def test_change_window_open():
                assert False, "outside the change window"
            """
        )
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(
        config, "--target=staging", str(pytester.path / "test_team.py"), url=scenario_db.url
    )
    assert run.json()["verdict"] == "FAIL"
    upgrade = next(c for c in run.step("1.2")["checks"] if c["check"] == "test_upgrade_head")
    assert upgrade["summary"] == ("not attempted: preflight test_change_window_open of 1.2 failed")
    assert scenario_db.current() == (CHAIN[0],)


def test_a_teams_check_records_its_evidence_and_finding_through_the_recorder(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, pytester: pytest.Pytester
) -> None:
    """The README's fixtures for a team's check: ``db`` reads the target, ``recorder`` puts
    what it saw into the sign-off and fails it with Expected / Seen / What to do."""
    pytester.makepyfile(
        test_team=textwrap.dedent(
            """
            import pytest
            from sqlalchemy import text

            from pytest_ledger_rollout.results import Evidence, Failure, failed

            @pytest.mark.dod("1.3")
            def test_no_legacy_view(db, recorder):
                sql = "SELECT count(*) FROM pg_views WHERE viewname = 'wallets'"
                seen = db.execute(text(sql)).scalar_one()
                recorder.check(
                    failed(
                        Failure("A team rule", "a legacy view", f"{seen} view(s)", "Add it."),
                        Evidence("team query", sql),
                    )
                )
            """
        )
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(
        config, "--target=staging", str(pytester.path / "test_team.py"), url=scenario_db.url
    )
    assert run.json()["verdict"] == "FAIL"
    team = next(c for c in run.step("1.3")["checks"] if c["name"] == "test_no_legacy_view")
    assert team["outcome"] == "failed" and team["check"] is None
    assert team["failure"] == {
        "title": "A team rule",
        "expected": "a legacy view",
        "seen": "0 view(s)",
        "remedy": "Add it.",
    }
    assert [e["label"] for e in team["evidence"]] == ["team query"]
    # The packaged checks of 1.3 ran and decided too.
    assert {c["check"] for c in run.step("1.3")["checks"]} >= {"test_no_drift_at_head"}


def test_a_team_check_cannot_be_an_action(
    tmp_path: Path, run_phase: RunPhase, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        test_team="import pytest\n\n@pytest.mark.dod('1.2', role='action')\ndef test_x(): pass\n"
    )
    config = write_config(tmp_path, database="ledger")
    run = run_phase(config, str(pytester.path / "test_team.py"))
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "a team's own check takes the role probe, preflight, verification" in run.output


def test_signoff_folder_that_is_a_file_is_refused_before_connecting(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = write_config(tmp_path, database=scenario_db.name)
    blocker = tmp_path / "reports-file"
    blocker.write_text("not a folder")
    run = run_phase(config, "--target=staging", url=scenario_db.url, reports=blocker)
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"the sign-off folder {blocker} cannot be written" in run.output
    assert f"{blocker} is not a folder" in run.output
    assert scenario_db.current() == (CHAIN[0],)


def test_xdist_is_refused(tmp_path: Path, run_phase: RunPhase) -> None:
    config = write_config(tmp_path, database="ledger")
    run = run_phase(config, "-p", "xdist", "-n", "2")
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--phase cannot run under pytest-xdist (-n)" in run.output


def test_two_runs_at_once_serialize_and_report_what_they_saw(
    scenario_db: ScenarioDb, tmp_path: Path
) -> None:
    """Two real processes against one database: the phase lock makes one wait for the other;
    the later one finds the database at head and says so, and both sign off honestly."""
    config = write_config(tmp_path, database=scenario_db.name)
    env = {**os.environ, "DATABASE_URL": scenario_db.url}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "--phase=stg-mig",
                "--target=staging",
                f"--rollout-config={config}",
                f"--signoff-dir={tmp_path / f'run{index}'}",
                f"--release={RELEASE}",
                "-p",
                "no:randomly",
                "-q",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    joined = "\n".join(outputs)
    assert f"upgraded {CHAIN[0]} -> {HEAD}" in joined
    assert "already at head: nothing to upgrade" in joined
    assert f"upgraded {HEAD} -> {HEAD}" not in joined
    assert scenario_db.current() == (HEAD,)
