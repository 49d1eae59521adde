"""Waivers: loading and validation, what they make of a step, and phase runs on a real Postgres."""

from __future__ import annotations

import datetime as dt
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import text

from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.phases.model import PHASES, Role
from pytest_ledger_rollout.phases.signoff import CheckRecord, RunRecord, Verdict
from pytest_ledger_rollout.phases.waivers import (
    WAIVED,
    WAIVED_NOT_RUN,
    Waiver,
    WaiverError,
    load_waivers,
)

from .support import HEAD, PhaseRun, RunPhase, ScenarioDb, write_config

STG_MIG = PHASES["stg-mig"]
TODAY = dt.date(2026, 6, 1)
# Phase runs judge expiry against the real UTC date.
RUN_DAY = dt.datetime.now(dt.UTC).date()
USAGE = pytest.ExitCode.USAGE_ERROR


def waiver_file(folder: Path, body: str) -> Path:
    path = folder / "waivers.yml"
    path.write_text(textwrap.dedent(body))
    return path


def waiver_yaml(step_id: str, expires: dt.date, *, run: bool = True) -> str:
    return textwrap.dedent(
        f"""
        "{step_id}":
          justification: "INC-42: accepted until the next change window"
          expiration_date: {expires.isoformat()}
          approver: "j.doe (DBA lead)"
          run: {str(run).lower()}
        """
    )


# --- loading ------------------------------------------------------------------------------


def test_loads_quoted_ids_with_defaults_and_expiry(tmp_path: Path) -> None:
    path = waiver_file(
        tmp_path,
        """
        "1.3":
          justification: constraint restored by hand
          expiration_date: 2026-06-01
          approver: j.doe
        "1.4":
          justification: downgrade smoke runs in the next window
          expiration_date: "2026-05-31"
          approver: a.smith
          run: false
        """,
    )
    waivers = load_waivers(path, STG_MIG, TODAY)
    assert waivers == {
        "1.3": Waiver("1.3", "constraint restored by hand", TODAY, "j.doe", True, expired=False),
        "1.4": Waiver(
            "1.4",
            "downgrade smoke runs in the next window",
            dt.date(2026, 5, 31),
            "a.smith",
            False,
            expired=True,
        ),
    }
    # The last day still holds; an expired run: false waiver skips nothing.
    assert not waivers["1.3"].expired
    assert not waivers["1.4"].skips


def test_empty_file_waives_nothing(tmp_path: Path) -> None:
    assert load_waivers(waiver_file(tmp_path, "# nothing waived\n"), STG_MIG, TODAY) == {}


_VALID = "justification: j\n  expiration_date: 2026-12-31\n  approver: a\n"


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('"1.3": [unclosed\n', "<file>", "not valid YAML"),
        ("- 1.3\n", "<root>", "must map step ids to waivers"),
        (f"1.4:\n  {_VALID}", "1.4", 'step ids must be quoted strings, e.g. "1.4"'),
        (f"1.10:\n  {_VALID}", "1.1", "quoted strings"),
        (f'"2.1":\n  {_VALID}', "2.1", "not a step of stg-mig: use one of 1.1, 1.2, 1.3, 1.4"),
        (f'"1.3":\n  {_VALID}"1.3":\n  {_VALID}', "<file>", "duplicate key '1.3'"),
        ('"1.3": yes\n', "1.3", "must be a mapping"),
        ('"1.3":\n  justification: j\n  approver: a\n', "1.3.expiration_date", "missing"),
        (f'"1.3":\n  {_VALID}  expires: 2027-01-01\n', "1.3.expires", "unknown field"),
        (f'"1.3":\n  {_VALID}  run: maybe\n', "1.3.run", "must be true or false"),
        ('"1.3":\n  justification: " "\n  expiration_date: 2026-12-31\n  approver: a\n',
         "1.3.justification", "non-empty text"),
        ('"1.3":\n  justification: j\n  expiration_date: 31/12/2026\n  approver: a\n',
         "1.3.expiration_date", "is not a date: write YYYY-MM-DD"),
        ('"1.3":\n  justification: j\n  expiration_date: 2026-12-31 10:00:00\n  approver: a\n',
         "1.3.expiration_date", "is not a date"),
        ('"1.3":\n  justification: j\n  expiration_date: 2026-02-30\n  approver: a\n',
         "1.3.expiration_date", "'2026-02-30' is not a date"),
        ('"1.3":\n  justification: j\n  expiration_date: "2026-13-01"\n  approver: a\n',
         "1.3.expiration_date", "'2026-13-01' is not a date"),
        ('"1.3": &w\n  justification: j\n  expiration_date: 2026-12-31\n  approver: a\n'
         '"1.4": *w\n', "<file>", "anchors and aliases (&name, *name) are not allowed"),
    ],
)  # fmt: skip
def test_malformed_files_name_the_key(tmp_path: Path, body: str, key: str, problem: str) -> None:
    with pytest.raises(WaiverError) as raised:
        load_waivers(waiver_file(tmp_path, body), STG_MIG, TODAY)
    assert raised.value.key == key
    assert problem in str(raised.value)
    assert "\n" not in str(raised.value)


# A "billion laughs": nine levels of nine aliases, 10**9 leaves from about 400 bytes.
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 500
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(WaiverError, match="anchors and aliases"):
            load_waivers(waiver_file(tmp_path, ALIAS_BOMB), STG_MIG, TODAY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 10 * 1024 * 1024


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "waivers.yml"
    path.write_text("# padding\n" * 10_000)
    with pytest.raises(WaiverError, match=r"<file>: larger than 65536 bytes"):
        load_waivers(path, STG_MIG, TODAY)


def test_the_phase_chain_cannot_be_waived(tmp_path: Path) -> None:
    path = waiver_file(tmp_path, waiver_yaml("2.0", TODAY))
    with pytest.raises(WaiverError, match=r"2\.0: cannot be waived"):
        load_waivers(path, PHASES["stg-roll"], TODAY)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WaiverError, match=r"nope\.yml: <file>: cannot read"):
        load_waivers(tmp_path / "nope.yml", STG_MIG, TODAY)


# --- what a waiver makes of a step ----------------------------------------------------------


def record_of(waivers: dict[str, Waiver], outcomes: dict[str, tuple[str, ...]]) -> RunRecord:
    """The step's required checks take the given outcomes in order; the rest passed."""
    record = RunRecord(STG_MIG, "staging", "staging", Scrubber(), waivers=waivers)
    for step in STG_MIG.steps:
        required = step.required("staging")
        given = outcomes[step.id]
        for index, check in enumerate(required):
            outcome = given[index] if index < len(given) else "passed"
            record.add(CheckRecord(check.name, step.id, outcome, outcome, check=check.name))
    return record


ALL_PASS = {step.id: ("passed",) for step in STG_MIG.steps}


def waiver(step_id: str, *, run: bool = True, expired: bool = False) -> Waiver:
    return Waiver(step_id, "why", TODAY, "who", run, expired)


@pytest.mark.parametrize(
    ("the_waiver", "checks", "step", "verdict"),
    [
        (waiver("1.3"), ("passed", "failed"), WAIVED, Verdict.PASS),
        (waiver("1.3"), ("failed", "error"), "failed", Verdict.FAIL),
        (waiver("1.3"), ("error",), "failed", Verdict.FAIL),
        (waiver("1.3", expired=True), ("failed",), "failed", Verdict.FAIL),
        (waiver("1.3", run=False), ("skipped",), WAIVED_NOT_RUN, Verdict.PASS),
        (waiver("1.3", run=False, expired=True), ("skipped",), "not run", "INCOMPLETE"),
        (waiver("1.3"), ("passed",), "passed", Verdict.PASS),
        (waiver("1.3"), ("skipped",), "not run", "INCOMPLETE"),
    ],
)
def test_waiver_changes_only_assertion_failures_and_skips(
    the_waiver: Waiver, checks: tuple[str, ...], step: str, verdict: str
) -> None:
    record = record_of({"1.3": the_waiver}, {**ALL_PASS, "1.3": checks})
    outcome = next(s for s in record.step_outcomes() if s.step.id == "1.3")
    assert (outcome.outcome, outcome.waiver) == (step, the_waiver)
    assert record.verdict() == verdict
    # A waived step is not a passed one: steps that build on it still do not run.
    smoke = STG_MIG.step("1.4")
    assert smoke is not None
    assert (record.gate(smoke, Role.PREFLIGHT) is None) == (step == "passed")


# --- phase runs on a real Postgres ----------------------------------------------------------


def misnamed_constraint_run(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, waivers: str
) -> PhaseRun:
    """Only step 1.3 fails: the config expects the UNIQUE constraint under another name. (A
    dropped constraint would fail 1.2's schema forensics too, and so leave 1.4 not run.)"""
    config = write_config(tmp_path, database=scenario_db.name)
    config.write_text(
        config.read_text().replace('"uq_recon_provider_event_type"', '"uq_recon_findings_key"')
    )
    path = waiver_file(tmp_path, waivers)
    return run_phase(config, "--target=staging", f"--waivers={path}", url=scenario_db.url)


def test_active_waiver_turns_a_failed_step_into_waived(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    expires = RUN_DAY + dt.timedelta(days=30)
    # 1.4 builds on 1.3, and a waived step is not a passed one: the smoke is waived too.
    waivers = waiver_yaml("1.3", expires) + waiver_yaml("1.4", expires, run=False)
    run = misnamed_constraint_run(scenario_db, tmp_path, run_phase, waivers)
    assert run.result.ret == 0, run.output
    data = run.json()
    assert data["verdict"] == "PASS"
    step = run.step("1.3")
    assert step["outcome"] == "waived"
    assert step["evidence"] == "The UNIQUE constraint on reconciliation_findings has another name"
    assert run.step("1.4")["outcome"] == "waived (not run)"
    run.result.assert_outcomes(passed=12, skipped=3, xfailed=1)  # the waived check: exit 0
    assert step["waiver"] == {
        "justification": "INC-42: accepted until the next change window",
        "expiration_date": expires.isoformat(),
        "approver": "j.doe (DBA lead)",
        "run": True,
        "expired": False,
    }
    assert {c["outcome"] for c in step["checks"]} >= {"failed"}
    assert [s["outcome"] for s in data["steps"] if s["id"] < "1.3"] == ["passed"] * 2
    note = (
        "INC-42: accepted until the next change window "
        f"(approved by j.doe (DBA lead), expires {expires})"
    )
    html = run.artifact(".html").read_text()
    assert f"<td>{note}</td>" in html
    assert "failed (waived)</b>" in html
    assert f"waiver: {note}" in run.output
    assert (
        "ledger-rollout verdict: stg-mig on staging (staging): PASS (waived: 1.3, 1.4)"
        in run.output
    )
    assert "waivers=waivers.yml sha256:" in run.output
    assert data["environment"]["waivers"].startswith("waivers.yml sha256:")


def test_a_waived_step_does_not_open_the_steps_that_need_it(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """1.4 needs 1.3: with 1.3's failure waived the smoke is not attempted, so the phase is
    INCOMPLETE (exit 1), never a PASS on the strength of a waiver."""
    expires = RUN_DAY + dt.timedelta(days=30)
    run = misnamed_constraint_run(scenario_db, tmp_path, run_phase, waiver_yaml("1.3", expires))
    assert run.result.ret == 1, run.output
    assert run.json()["verdict"] == "INCOMPLETE"
    smoke = run.step("1.4")
    assert smoke["outcome"] == "not run"
    assert smoke["evidence"] == "not attempted: 1.3 was waived"
    assert "INCOMPLETE (waived: 1.3)" in run.output


def test_expired_waiver_is_ignored_with_a_note(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    expired = RUN_DAY - dt.timedelta(days=1)
    run = misnamed_constraint_run(scenario_db, tmp_path, run_phase, waiver_yaml("1.3", expired))
    assert run.result.ret == 1
    assert run.json()["verdict"] == "FAIL"
    step = run.step("1.3")
    assert step["outcome"] == "failed"
    assert step["waiver"]["expired"] is True
    note = f"waiver expired {expired} (approved by j.doe (DBA lead)), step evaluated normally"
    assert note in run.artifact(".html").read_text()
    assert note in run.output


def test_run_false_skips_the_step_and_it_counts_as_waived(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = write_config(tmp_path, database=scenario_db.name)
    path = waiver_file(tmp_path, waiver_yaml("1.4", RUN_DAY, run=False))
    run = run_phase(config, "--target=staging", f"--waivers={path}", url=scenario_db.url)
    assert run.result.ret == 0, run.output
    assert run.json()["verdict"] == "PASS"
    step = run.step("1.4")
    assert step["outcome"] == "waived (not run)"
    assert step["checks"] and {c["outcome"] for c in step["checks"]} == {"skipped"}
    assert "waived (run: false)" in step["evidence"]
    assert "run: false)" in run.artifact(".html").read_text()
    assert scenario_db.current() == (HEAD,)  # 1.2 upgraded; the smoke left it alone


def test_errors_in_waived_steps_still_fail(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """Every step waived, but a held lock makes checks error: those steps fail regardless."""
    config = write_config(
        tmp_path,
        database=scenario_db.name,
        extra="[session]\nlock_timeout_ms = 300\nstatement_timeout_ms = 5000\n",
    )
    expires = RUN_DAY + dt.timedelta(days=1)
    path = waiver_file(tmp_path, "".join(waiver_yaml(s.id, expires) for s in STG_MIG.steps))
    holder = scenario_db.engine.connect()
    holder.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
    try:
        run = run_phase(config, "--target=staging", f"--waivers={path}", url=scenario_db.url)
    finally:
        holder.rollback()
        holder.close()
    assert run.result.ret == 1
    assert run.json()["verdict"] == "FAIL"
    step = run.step("1.1")
    assert step["outcome"] == "failed"
    assert step["waiver"]["expired"] is False
    assert "error" in {c["outcome"] for c in step["checks"]}
    assert "canceling statement due to lock timeout" in run.output


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('"1.3": [unclosed\n', "waivers.yml: <file>: not valid YAML"),
        (waiver_yaml("2.1", TODAY), "waivers.yml: 2.1: not a step of stg-mig"),
    ],
)
def test_malformed_file_or_unknown_step_is_a_usage_error(
    tmp_path: Path, run_phase: RunPhase, body: str, problem: str
) -> None:
    config = write_config(tmp_path, database="ledger")
    path = waiver_file(tmp_path, body)
    # Nothing answers on port 1: a usage error must come before any connection.
    url = "postgresql://u@127.0.0.1:1/ledger"
    run = run_phase(config, "--target=staging", f"--waivers={path}", url=url)
    assert run.result.ret == USAGE
    assert f"invalid waiver file: {path.parent}" in run.output
    assert problem in run.output
    assert not run.reports.exists()


def test_waivers_from_ini_and_command_line_wins(
    tmp_path: Path, run_phase: RunPhase, pytester: pytest.Pytester
) -> None:
    config = write_config(tmp_path, database="ledger")
    (pytester.path / "ini-waivers.yml").write_text(waiver_yaml("3.1", TODAY))
    pytester.makeini("[pytest]\nrollout_waivers = ini-waivers.yml\n")
    url = "postgresql://u@127.0.0.1:1/ledger"
    from_ini = run_phase(config, "--target=staging", url=url)
    assert from_ini.result.ret == USAGE
    assert f"{pytester.path / 'ini-waivers.yml'}: 3.1: not a step" in from_ini.output
    cli = waiver_file(tmp_path, waiver_yaml("9.9", TODAY))
    from_cli = run_phase(config, "--target=staging", f"--waivers={cli}", url=url)
    assert f"{cli}: 9.9: not a step" in from_cli.output
