"""The run record: what each check saw, per runbook step, the verdict, and the JSON artifact."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .masking import Scrubber
from .phases import Check, Phase, Role, Step
from .provenance import RepositoryState
from .results import Evidence, Failure
from .waivers import WAIVED, Waiver, waived_outcome

PASS, FAIL, INCOMPLETE, INTERRUPTED = "PASS", "FAIL", "INCOMPLETE", "INTERRUPTED"
DECISION_FACT = "OPS-02 decision"  # the environment fact a deciding phase's 3.3 records
PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
NOT_ATTEMPTED = "not attempted"  # how a check the step model held back says why
SCHEMA_VERSION = 2  # of the sign-off JSON; chain.py validates against it


@dataclass
class CheckRecord:
    """One suite test's outcome (a step may have several)."""

    name: str
    step_id: str
    outcome: str  # passed | failed | error | skipped
    summary: str
    evidence: list[Evidence] = field(default_factory=list)
    message: str = ""
    role: Role = Role.PROBE
    check: str | None = None  # the packaged check it is (its function name); None: a team's own
    failure: Failure | None = None  # what a failed check found, in the runbook's terms


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    outcome: str  # passed | failed | not run | waived | waived (not run)
    evidence: str  # one line for the checklist
    checks: tuple[CheckRecord, ...]
    waiver: Waiver | None = None  # the step's waiver on file, active or expired


def _packaged(step: Step, record: CheckRecord) -> Check:
    """The packaged check a record is; a team's own check holds back and is waivable."""
    found = step.check(record.check) if record.check is not None else None
    return found or Check(record.name)


@dataclass
class RunRecord:
    phase: Phase
    target: str
    target_kind: str
    scrubber: Scrubber
    environment: dict[str, str] = field(default_factory=dict)
    checks: list[CheckRecord] = field(default_factory=list)
    aborted: str | None = None  # why the run stopped before its checks
    interrupted: str | None = None  # why the run ended before its last check (Ctrl-C, a crash)
    waivers: Mapping[str, Waiver] = field(default_factory=dict)
    head: str = ""  # the migration head the run expects
    release: str | None = None
    # The database the run proved it is on (ServerIdentity.as_json()); the chain compares it.
    identity: dict[str, Any] | None = None
    operator: str = ""
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    repositories: dict[str, RepositoryState | None] = field(default_factory=dict)

    @property
    def rehearsal(self) -> bool:
        return self.target_kind == "ephemeral"

    def add(self, record: CheckRecord) -> None:
        record.summary = self.scrubber.scrub(record.summary)
        record.message = self.scrubber.scrub(record.message)
        record.evidence = [
            Evidence(self.scrubber.scrub(e.label), self.scrubber.scrub(e.body))
            for e in record.evidence
        ]
        if record.failure is not None:
            scrub = self.scrubber.scrub
            failure = record.failure
            record.failure = Failure(
                scrub(failure.title), scrub(failure.expected), scrub(failure.seen),
                scrub(failure.remedy),
            )  # fmt: skip
        self.checks.append(record)

    def step_outcomes(self) -> list[StepOutcome]:
        return [self._step_outcome(step) for step in self.phase.steps]

    def _step_outcome(self, step: Step) -> StepOutcome:
        """Passed only when every check the step requires ran and passed and none failed; a
        team's own check can fail a step but never stand in for a packaged one."""
        checks = tuple(c for c in self.checks if c.step_id == step.id)
        bad = [c for c in checks if c.outcome in ("failed", "error")]
        missing = [
            required.name
            for required in step.required(self.target_kind)
            if self._outcome_of(step.id, required.name) != "passed"
        ]
        if bad:
            outcome, line = FAILED, bad[0].summary
        elif missing:
            outcome, line = NOT_RUN, self._why_not_run(step.id, missing)
        else:
            good = [c.summary for c in checks if c.outcome == "passed"]
            outcome, line = PASSED, "; ".join(good)
        waiver = self.waivers.get(step.id)
        unwaivable = [c for c in bad if not _packaged(step, c).waivable]
        if unwaivable:
            line = unwaivable[0].summary  # no waiver of the step covers it
        else:
            outcome = waived_outcome(waiver, {c.outcome for c in checks}) or outcome
        return StepOutcome(step, outcome, line, checks, waiver)

    def _outcome_of(self, step_id: str, check: str) -> str | None:
        return next(
            (c.outcome for c in self.checks if c.step_id == step_id and c.check == check), None
        )

    def _why_not_run(self, step_id: str, missing: list[str]) -> str:
        skipped = [
            c.summary
            for c in self.checks
            if c.step_id == step_id and c.check in missing and c.summary
        ]
        if skipped:
            return skipped[0]
        return f"required check(s) did not run (deselected or interrupted): {', '.join(missing)}"

    def gate(self, step: Step, role: Role, needs: tuple[str, ...] = ()) -> str | None:
        """Why a check of ``step`` in ``role`` must not run now, or None when it may.

        Every check waits for the steps its step (and the check itself) needs; an action also
        for every pre-flight of its step, which must have run and passed; a verification for
        the step's actions."""
        outcomes = {s.step.id: s for s in self.step_outcomes()}
        for needed in dict.fromkeys((*step.needs, *needs)):
            if not self._opens(outcomes[needed]):
                return f"{NOT_ATTEMPTED}: {needed} {_describe(outcomes[needed].outcome)}"
        earlier = {Role.ACTION: Role.PREFLIGHT, Role.VERIFICATION: Role.ACTION}.get(role)
        if earlier is None:
            return None
        for check in step.required(self.target_kind):
            if check.role is earlier and self._outcome_of(step.id, check.name) != "passed":
                state = self._outcome_of(step.id, check.name) or "did not run"
                return f"{NOT_ATTEMPTED}: {earlier} {check.name} of {step.id} {_describe(state)}"
        for record in self.checks:
            team_check = record.check is None and record.step_id == step.id
            if team_check and record.role is earlier and record.outcome != "passed":
                return (
                    f"{NOT_ATTEMPTED}: {earlier} {record.name} of {step.id} "
                    f"{_describe(record.outcome)}"
                )
        return None

    def _opens(self, outcome: StepOutcome) -> bool:
        """Whether a step lets the steps that need it run: passed, or waived where only a
        check it does not require failed (every check it requires ran and passed), or failed
        only by checks that do not hold back (``Check.holds_back``)."""
        if outcome.outcome == PASSED:
            return True
        if outcome.outcome not in (FAILED, WAIVED):
            return False
        step = outcome.step
        required = step.required(self.target_kind)
        if outcome.outcome == WAIVED:
            return all(self._outcome_of(step.id, check.name) == "passed" for check in required)
        # Failed by a check that does not hold back: the others open it as they would alone
        # (every required one passed; any other failure waived).
        if not all(
            self._outcome_of(step.id, check.name) == "passed"
            for check in required
            if check.holds_back
        ):
            return False
        bad = [c for c in outcome.checks if c.outcome in ("failed", "error")]
        holding = {c.outcome for c in bad if _packaged(step, c).holds_back}
        return not holding or waived_outcome(outcome.waiver, holding) == WAIVED

    def verdict(self) -> str:
        # A waived step (failure waived, or not run by its waiver) neither fails nor leaves
        # the phase incomplete; the verdict line names it.
        if self.aborted:
            return FAIL
        if self.interrupted:
            return INTERRUPTED
        outcomes = [s.outcome for s in self.step_outcomes()]
        if FAILED in outcomes:
            return FAIL
        if NOT_RUN in outcomes:
            return INCOMPLETE
        return PASS

    def decision(self) -> str | None:
        """A deciding phase's GO / HOLD / ROLLBACK: GO only when every step passed and OPS-02
        said GO; ROLLBACK when OPS-02 said so; a dry run says what it would decide."""
        if not self.phase.decides:
            return None
        ops02 = self.environment.get(DECISION_FACT, "")
        if ops02 == "GO":
            return "GO" if self.verdict() == PASS else "HOLD"
        if ops02 == "ROLLBACK" or ops02.startswith("DRY RUN"):
            return ops02
        return "HOLD"

    def as_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "plugin_version": __version__,
            "phase": self.phase.name,
            "target": self.target,
            "target_kind": self.target_kind,
            "rehearsal": self.rehearsal,
            "verdict": self.verdict(),
            "decision": self.decision(),
            "aborted": self.aborted,
            "interrupted": self.interrupted,
            "head": self.head,
            "release": self.release,
            "identity": self.identity,
            "operator": self.operator,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "duration_s": (
                round((self.finished - self.started).total_seconds(), 3)
                if self.started and self.finished
                else None
            ),
            "repositories": {
                name: state.as_json() if state else None
                for name, state in self.repositories.items()
            },
            "counts": count_outcomes(self.checks),
            "steps": [
                {
                    "id": s.step.id,
                    "title": s.step.title,
                    "outcome": s.outcome,
                    "evidence": s.evidence,
                    "waiver": s.waiver.as_json() if s.waiver else None,
                    "required": [c.name for c in s.step.required(self.target_kind)],
                    "checks": [
                        {
                            "name": c.name,
                            "check": c.check,
                            "role": str(c.role),
                            "outcome": c.outcome,
                            "summary": c.summary,
                            "failure": asdict(c.failure) if c.failure else None,
                            "message": c.message,
                            "evidence": [{"label": e.label, "body": e.body} for e in c.evidence],
                        }
                        for c in s.checks
                    ],
                }
                for s in self.step_outcomes()
            ],
            "environment": dict(self.environment),
        }


CHECK_OUTCOMES = ("passed", "failed", "error", "skipped")


def count_outcomes(checks: Iterable[CheckRecord]) -> dict[str, int]:
    """Each check outcome's count, in a fixed order (the JSON's and the page's)."""
    outcomes = [check.outcome for check in checks]
    return {outcome: outcomes.count(outcome) for outcome in CHECK_OUTCOMES}


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _describe(outcome: str) -> str:
    """A step's or check's outcome as the reason a later check did not run."""
    return {
        FAILED: "failed",
        "error": "failed with an error",
        NOT_RUN: "did not run",
        "skipped": "did not run",
        "did not run": "did not run",
    }.get(outcome, f"was {outcome}")


@dataclass(frozen=True)
class SignoffPaths:
    html: Path
    json: Path
    checksums: Path


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def signoff_paths(folder: Path, phase: str, target: str, started: dt.datetime) -> SignoffPaths:
    """``<phase>-<target>-<UTC stamp>.{html,json,sha256}`` inside ``folder``, whatever the names
    hold: anything but letters, digits and ``._-`` becomes ``_``, so no separator survives."""
    folder = folder.resolve()
    name = "-".join(_UNSAFE_NAME.sub("_", part) for part in (phase, target))
    stem = folder / f"{name}-{started.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"
    return SignoffPaths(*(stem.with_name(f"{stem.name}.{s}") for s in ("html", "json", "sha256")))


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``: never through a symlink, never over an existing file, and
    never seen half-written. The data goes to a private temp file that is hard-linked into
    place; ``link`` fails on any existing name, a planted symlink included, and follows none."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o644)
        place_new(Path(temp), path)
    finally:
        Path(temp).unlink(missing_ok=True)


def place_new(source: Path, destination: Path) -> None:
    """Give ``source`` the name ``destination`` unless that name exists (file or symlink):
    then FileExistsError, and nothing is overwritten."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(
            f"{destination} already exists (a file or a symlink): a sign-off never overwrites "
            "one; remove it or choose another --signoff-dir"
        ) from None


def staged_html(final: Path) -> Path:
    """A private path (in a 0700 folder beside ``final``) for pytest-html to write the report
    to; ``place_staged`` then puts it in place without following a symlink at ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=".staging-")) / final.name


def place_staged(staged: Path, final: Path) -> None:
    try:
        if staged.is_file():
            place_new(staged, final)
    finally:
        staged.unlink(missing_ok=True)
        staged.parent.rmdir()


def write_json(record: RunRecord, path: Path) -> None:
    # Scrubbed once more as a whole: nothing secret may reach the artifact by any route.
    text = json.dumps(record.as_json(), indent=2, ensure_ascii=False)
    write_new(path, (record.scrubber.scrub(text) + "\n").encode())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(paths: list[Path], checksum_path: Path) -> None:
    """``sha256sum -c`` compatible, names relative to the checksum file."""
    lines = [f"{sha256_file(p)}  {p.name}" for p in paths if p.exists()]
    write_new(checksum_path, ("\n".join(lines) + "\n").encode())
