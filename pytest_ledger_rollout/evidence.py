"""The run record: what each check saw, per runbook step, the verdict, and the JSON artifact."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .masking import Scrubber
from .phases import Phase, Step
from .results import Evidence
from .waivers import Waiver, waived_outcome

PASS, FAIL, INCOMPLETE = "PASS", "FAIL", "INCOMPLETE"
DECISION_FACT = "OPS-02 decision"  # the environment fact a deciding phase's 3.3 records
PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
HEAD_FACT, RELEASE_FACT = "alembic head (expected)", "release"  # environment keys
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
    preflight: bool = False  # a pre-flight of a destructive step (marker "preflight")


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    outcome: str  # passed | failed | not run | waived | waived (not run)
    evidence: str  # one line for the checklist
    checks: tuple[CheckRecord, ...]
    waiver: Waiver | None = None  # the step's waiver on file, active or expired


@dataclass
class RunRecord:
    phase: Phase
    target: str
    target_kind: str
    scrubber: Scrubber
    environment: dict[str, str] = field(default_factory=dict)
    checks: list[CheckRecord] = field(default_factory=list)
    aborted: str | None = None  # why the run stopped before its checks
    waivers: Mapping[str, Waiver] = field(default_factory=dict)
    # The database the run proved it is on (ServerIdentity.as_json()); the chain compares it.
    identity: dict[str, Any] | None = None

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
        self.checks.append(record)

    def step_outcomes(self) -> list[StepOutcome]:
        outcomes = []
        for step in self.phase.steps:
            checks = tuple(c for c in self.checks if c.step_id == step.id)
            bad = [c for c in checks if c.outcome in ("failed", "error")]
            good = [c for c in checks if c.outcome == "passed"]
            if bad:
                outcome, line = FAILED, bad[0].summary
            elif good:
                outcome, line = PASSED, "; ".join(c.summary for c in good)
            else:
                skipped = [c.summary for c in checks if c.summary]
                outcome, line = NOT_RUN, skipped[0] if skipped else "no check ran"
            waiver = self.waivers.get(step.id)
            outcome = waived_outcome(waiver, {c.outcome for c in checks}) or outcome
            outcomes.append(StepOutcome(step, outcome, line, checks, waiver))
        return outcomes

    def failed_preflights(self) -> list[CheckRecord]:
        return [c for c in self.checks if c.preflight and c.outcome in ("failed", "error")]

    def step_passed(self, step_id: str) -> bool:
        return any(s.step.id == step_id and s.outcome == PASSED for s in self.step_outcomes())

    def verdict(self) -> str:
        # A waived step (failure waived, or not run by its waiver) neither fails nor leaves
        # the phase incomplete.
        if self.aborted:
            return FAIL
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
            "head": self.environment.get(HEAD_FACT),
            "release": self.environment.get(RELEASE_FACT),
            "identity": self.identity,
            "steps": [
                {
                    "id": s.step.id,
                    "title": s.step.title,
                    "outcome": s.outcome,
                    "evidence": s.evidence,
                    "waiver": s.waiver.as_json() if s.waiver else None,
                    "checks": [
                        {
                            "name": c.name,
                            "outcome": c.outcome,
                            "summary": c.summary,
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
