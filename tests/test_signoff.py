"""Sign-offs written and read in one module: a phase's sign-off read back typed by the next
phase, other schema versions and forged fields refused by name, the OPS-02 decision typed from
the run record to the chain, and (read from the source) no code reading a display string or
comparing a phase's name outside the step model."""

from __future__ import annotations

import ast
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_ledger_rollout.checks.metrics.decision import Verdict as Ops02Verdict
from pytest_ledger_rollout.checks.tenant_decision import Ops02Decision
from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.phases.chain import check_predecessor
from pytest_ledger_rollout.phases.model import PHASES, Needs, Phase, Predecessor, Rehearsal
from pytest_ledger_rollout.phases.rehearsal import RehearsalFailed, rehearse
from pytest_ledger_rollout.phases.signoff import (
    DECISION_SHOWN,
    SCHEMA_VERSION,
    CheckRecord,
    RunRecord,
    UnreadableSignoff,
    Verdict,
    read_signoff,
    signed_at,
    signoff_paths,
    signoffs_of,
    write_checksums,
    write_json,
)
from pytest_ledger_rollout.results import CheckResult

from .layers import package_sources
from .support import HEAD, IDENTITY, RELEASE, REPO, write_signoff

STARTED = dt.datetime(2026, 11, 28, 14, 5, 12, tzinfo=dt.UTC)
GO = Ops02Decision(Ops02Verdict.GO)


def record_of(phase: str, *, failed: str | None = None, target: str = "prod") -> RunRecord:
    """A run of ``phase`` on a staging-or-production target in which every required check
    passed, except the one named ``failed``."""
    record = RunRecord(
        PHASES[phase], target, "production" if PHASES[phase].read_only else "staging",
        Scrubber(), head=HEAD, release=RELEASE, identity=dict(IDENTITY), operator="release",
        started=STARTED, finished=STARTED + dt.timedelta(seconds=3),
    )  # fmt: skip
    for step in record.phase.steps:
        for check in step.required(record.target_kind):
            outcome = "failed" if check.name == failed else "passed"
            record.add(CheckRecord(check.name, step.id, outcome, "ok", check=check.name))
    return record


def signed_off(record: RunRecord, folder: Path) -> Path:
    """The record written as a phase run writes it: JSON, HTML and their sha256."""
    paths = signoff_paths(folder, record.phase.name, record.target, STARTED)
    folder.mkdir(parents=True, exist_ok=True)
    paths.html.write_text("<html>sign-off</html>")
    write_json(record, paths.json)
    write_checksums([paths.html, paths.json], paths.checksums)
    return paths.json


def chain(phase: str, path: Path) -> CheckResult:
    return check_predecessor(
        phase, signoff_dir=path.parent, head=HEAD, release=RELEASE, rehearsal=False,
        identity=IDENTITY, path=path,
    )  # fmt: skip


def refusal(result: CheckResult) -> str:
    assert result.failure is not None, result.summary
    return "\n".join([result.failure.title, result.failure.seen, result.failure.remedy])


# --- one phase's sign-off, read back typed by the next ----------------------------------------


def test_a_signoff_written_by_one_phase_is_read_back_typed_by_the_next(tmp_path: Path) -> None:
    path = signed_off(record_of("stg-mig", target="staging"), tmp_path)
    signoff = read_signoff(path)
    assert signoff.verdict is Verdict.PASS and signoff.decision is None
    assert (signoff.phase, signoff.target, signoff.head, signoff.release) == (
        "stg-mig", "staging", HEAD, RELEASE,
    )  # fmt: skip
    assert set(signoff.steps) == {"1.1", "1.2", "1.3", "1.4"}
    assert (
        signoff.steps["1.2"].outcome == "passed" and "passed" in signoff.steps["1.2"].check_outcomes
    )
    result = chain("stg-roll", path)
    assert result.ok, result.failure
    assert result.summary.startswith(f"stg-mig PASS: {path.name}")


def test_a_failed_phase_is_read_back_as_fail_and_refused(tmp_path: Path) -> None:
    path = signed_off(record_of("stg-mig", failed="test_upgrade_head", target="staging"), tmp_path)
    assert read_signoff(path).verdict is Verdict.FAIL
    assert "not every step passed: step 1.2 failed" in refusal(chain("stg-roll", path))
    # Its steps forged to passed, the typed verdict still refuses it.
    steps = json.loads(path.read_text())["steps"]
    for step in steps:
        step.update(outcome="passed", checks=[{**step["checks"][0], "outcome": "passed"}])
    assert "verdict is FAIL, not PASS" in refusal(chain("stg-roll", rewritten(path, steps=steps)))


def test_the_pilots_decision_is_typed_from_the_record_to_the_ga_chain(tmp_path: Path) -> None:
    record = record_of("prd-pilot")
    record.decide(GO)
    path = signed_off(record, tmp_path / "go")
    assert json.loads(path.read_text())["decision"] == {"verdict": "GO", "dry_run": False}
    assert read_signoff(path).decision == GO
    result = chain("prd-ga", path)
    assert result.ok, result.failure
    assert result.summary.startswith(f"prd-pilot GO: {path.name}")


@pytest.mark.parametrize(
    ("decision", "failed", "written", "reason"),
    [
        (Ops02Decision(Ops02Verdict.GO, dry_run=True), None, {"verdict": "GO", "dry_run": True},
         "decision is DRY RUN (would decide GO), not GO"),
        (Ops02Decision(Ops02Verdict.ROLLBACK), None, {"verdict": "ROLLBACK", "dry_run": False},
         "decision is ROLLBACK, not GO"),
        (Ops02Decision(Ops02Verdict.HOLD), None, {"verdict": "HOLD", "dry_run": False},
         "decision is HOLD, not GO"),
        # OPS-02 said GO, but a step failed: the run decides HOLD.
        (GO, "test_pilot_backfill_clean", {"verdict": "HOLD", "dry_run": False},
         "not every step passed: step 3.2 failed"),
        (None, None, {"verdict": "HOLD", "dry_run": False}, "decision is HOLD, not GO"),
    ],
    ids=["dry run GO", "ROLLBACK", "HOLD", "GO with a failed step", "never decided"],
)  # fmt: skip
def test_anything_but_a_go_of_the_pilot_is_refused_by_ga(
    tmp_path: Path,
    decision: Ops02Decision | None,
    failed: str | None,
    written: dict[str, Any],
    reason: str,
) -> None:
    record = record_of("prd-pilot", failed=failed)
    if decision is not None:
        record.decide(decision)
    path = signed_off(record, tmp_path)
    assert json.loads(path.read_text())["decision"] == written
    assert reason in refusal(chain("prd-ga", path))


def test_a_decision_is_shown_in_the_environment_and_taken_once_by_a_deciding_phase() -> None:
    record = record_of("prd-pilot")
    record.decide(Ops02Decision(Ops02Verdict.HOLD, dry_run=True))
    assert record.environment[DECISION_SHOWN] == "DRY RUN (would decide HOLD)"
    with pytest.raises(ValueError, match="already decided DRY RUN"):
        record.decide(GO)
    with pytest.raises(ValueError, match="phase prd-ga takes no OPS-02 decision"):
        record_of("prd-ga").decide(GO)
    assert record_of("prd-ga").decision() is None
    assert json.loads(json.dumps(record_of("stg-mig").as_json()))["decision"] is None


# --- forged and other-version sign-offs ------------------------------------------------------


def rewritten(path: Path, **changes: Any) -> Path:
    """The sign-off with ``changes`` to its JSON and its sha256 recomputed (what a forger, or
    an older plugin, can produce)."""
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))
    path.with_suffix(".sha256").unlink()
    write_checksums([path.with_suffix(".html"), path], path.with_suffix(".sha256"))
    return path


def test_a_schema_2_signoff_is_refused_naming_its_version(tmp_path: Path) -> None:
    """Schema 2 held the decision as a display string: it is not read, whatever it says."""
    record = record_of("prd-pilot")
    record.decide(GO)
    path = rewritten(signed_off(record, tmp_path), schema_version=2, decision="GO")
    with pytest.raises(UnreadableSignoff) as refused:
        read_signoff(path)
    assert refused.value.why.startswith(
        "schema_version 2, not 3: written by an earlier plugin in sign-off schema 2"
    )
    text = refusal(chain("prd-ga", path))
    assert "schema_version 2, not 3: written by an earlier plugin" in text
    assert "reads schema version 3 only" in text
    assert "Rerun prd-pilot with pytest-ledger-rollout" in text
    assert "for a sign-off of schema version 3" in text


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        (4, "schema_version 4, not 3: written by a later plugin in sign-off schema 4"),
        ("3", "schema_version '3', not 3: not a sign-off of this plugin"),
        (True, "schema_version True, not 3: not a sign-off of this plugin"),
        (None, "schema_version None, not 3: not a sign-off of this plugin"),
    ],
)
def test_other_schema_versions_are_refused_by_name(
    tmp_path: Path, version: object, reason: str
) -> None:
    path = rewritten(signed_off(record_of("stg-mig", target="staging"), tmp_path),
                     schema_version=version)  # fmt: skip
    assert reason in refusal(chain("stg-roll", path))


@pytest.mark.parametrize(
    ("changes", "malformed"),
    [
        ({"decision": "GO"}, "decision"),  # the display string of schema 2
        ({"decision": {"verdict": "go", "dry_run": False}}, "decision"),
        ({"decision": {"verdict": "GO"}}, "decision"),
        ({"decision": {"verdict": "GO", "dry_run": "no"}}, "decision"),
        ({"verdict": "PASSED"}, "verdict"),
        ({"verdict": "PASS -> GO"}, "verdict"),
        ({"rehearsal": "false"}, "rehearsal"),
        ({"identity": "ledger"}, "identity"),
    ],
)
def test_a_forged_field_is_refused_not_read(
    tmp_path: Path, changes: dict[str, Any], malformed: str
) -> None:
    record = record_of("prd-pilot")
    record.decide(GO)
    path = rewritten(signed_off(record, tmp_path), **changes)
    text = refusal(chain("prd-ga", path))
    assert f"missing or malformed: {malformed}" in text
    assert f"schema version {SCHEMA_VERSION}), unedited" in text


# --- the sign-off's name, built and read in one place ---------------------------------------


@pytest.mark.parametrize("target", ["prod", "eu-prod-2", "x/../y", "a b"])
def test_a_signoffs_name_reads_back_as_its_start(tmp_path: Path, target: str) -> None:
    path = signoff_paths(tmp_path, "prd-pilot", target, STARTED).json
    assert signed_at(path, "prd-pilot") == STARTED
    assert signed_at(path, "stg-roll") is None


@pytest.mark.parametrize(
    "name",
    [
        "prd-pilot-prod-20261128T140512Z.html",  # not the JSON
        "prd-pilot-20261128T140512Z.json",  # no target
        "prd-pilot-prod-2026112T14512Z.json",  # not the stamp's format
        "prd-pilot-prod-20261332T140512Z.json",  # no such date
        "prd-pilot-prod-latest.json",
    ],
)
def test_other_names_are_not_signoffs(tmp_path: Path, name: str) -> None:
    assert signed_at(tmp_path / name, "prd-pilot") is None


def test_the_newest_signoff_is_by_its_start_not_its_name(tmp_path: Path) -> None:
    older = write_signoff(tmp_path, "stg-roll", target="zz-staging", stamp="20261127T090000Z")
    newer = write_signoff(tmp_path, "stg-roll", target="aa-staging", stamp="20261128T090000Z")
    (tmp_path / "stg-roll-notes.json").write_text("{}")
    assert signoffs_of(tmp_path, "stg-roll") == [older, newer]


# --- the source: nothing parses a display string; phases are named in the model only --------

DECISION_WORDS = {str(verdict) for verdict in Ops02Verdict}


def display_string_reads(tree: ast.AST) -> list[str]:
    """Comparisons with a decision's words or the dry run's wording, ``startswith`` and the
    like on them, and reads (not writes) of the decision's environment row."""
    written = {
        id(node.slice)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
    }
    parsing = ("startswith", "endswith", "removeprefix", "split", "find", "index")
    found = []
    for node in ast.walk(tree):
        operands: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in parsing:
            operands = list(node.args)
        words = [
            operand.value
            for operand in operands
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str)
        ]
        if any(word in DECISION_WORDS or word.startswith("DRY RUN") for word in words):
            found.append(f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)}")
        row = isinstance(node, ast.Name) and node.id in ("DECISION_SHOWN", "DECISION_FACT")
        if row and isinstance(node.ctx, ast.Load) and id(node) not in written:  # type: ignore[attr-defined]
            found.append(f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)}")
    return found


def test_no_code_parses_the_decision_display_string() -> None:
    sources = package_sources(REPO)
    found = {
        module: display_string_reads(ast.parse(path.read_text()))
        for module, path in sources.items()
    }
    # The one use of the environment row's name: the record writes it for people.
    signoff = sources["pytest_ledger_rollout.phases.signoff"].read_text()
    assert signoff.count("DECISION_SHOWN") == 2
    assert "self.environment[DECISION_SHOWN] = str(decision)" in signoff
    assert {module: lines for module, lines in found.items() if lines} == {}


@pytest.mark.parametrize(
    "code",
    [
        'if ops02 == "GO": pass',
        'if "ROLLBACK" != decision: pass',
        'ok = ops02.startswith("DRY RUN")',
        'shown = record.environment.get(DECISION_FACT, "")',
        "decision = environment[DECISION_SHOWN]",
    ],
)
def test_the_source_check_finds_a_display_string_parsed(code: str) -> None:
    assert display_string_reads(ast.parse(code))


@pytest.mark.parametrize(
    "code",
    [
        "self.environment[DECISION_SHOWN] = str(decision)",
        'shown = f"DRY RUN (would decide {self.verdict})"',
        "if decision.verdict is Verdict.GO and not decision.dry_run: pass",
    ],
)
def test_the_source_check_lets_writing_and_typed_reading_be(code: str) -> None:
    assert display_string_reads(ast.parse(code)) == []


def phase_names_compared(tree: ast.AST) -> list[str]:
    names = set(PHASES)
    return [
        f"line {node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names
    ]


def test_a_phase_is_named_in_the_step_model_only() -> None:
    """What a phase is (its predecessor, rehearsal, suite, decision) is read from its Phase:
    no other module of the package or its suites names a phase."""
    found = {
        module: phase_names_compared(ast.parse(path.read_text()))
        for module, path in package_sources(REPO).items()
        if module != "pytest_ledger_rollout.phases.model"
    }
    assert {module: lines for module, lines in found.items() if lines} == {}
    assert phase_names_compared(ast.parse('waves = ga if phase.name == "prd-ga" else pilot'))


def test_every_phase_declares_its_chain_rehearsal_and_suite() -> None:
    order = list(PHASES)
    first, *later = PHASES.values()
    assert first.predecessor is None
    for phase in later:
        assert phase.predecessor is not None, phase.name
        # The chain runs forward: a predecessor is an earlier phase of the model.
        assert order.index(phase.predecessor.phase) < order.index(phase.name)
        assert phase.rehearsal is not Rehearsal.NONE
    suites = {path.parent.name for path in (REPO / "suites").glob("*/__init__.py")}
    assert suites == {phase.suite for phase in PHASES.values()}
    assert [p.name for p in PHASES.values() if p.decides] == ["prd-pilot"]
    assert PHASES["prd-ga"].predecessor == Predecessor("prd-pilot", Needs.GO, same_database=True)


def test_a_phase_without_a_rehearsal_is_not_rehearsed(tmp_path: Path) -> None:
    phase: Phase = PHASES["stg-mig"]
    assert phase.rehearsal is Rehearsal.NONE
    with pytest.raises(RehearsalFailed, match="phase stg-mig has no rehearsal"):
        rehearse(None, phase, "", None, "", {}, None)  # type: ignore[arg-type]
