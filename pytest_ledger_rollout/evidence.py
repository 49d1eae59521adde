"""The run record: what each check saw, per runbook step, the verdict, and the JSON artifact."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .masking import Scrubber
from .phases import Phase, Step
from .results import Evidence
from .waivers import Waiver, waived_outcome

PASS, FAIL, INCOMPLETE = "PASS", "FAIL", "INCOMPLETE"
DECISION_FACT = "OPS-02 decision"  # the environment fact a deciding phase's 3.3 records
PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"


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
            "phase": self.phase.name,
            "target": self.target,
            "target_kind": self.target_kind,
            "rehearsal": self.rehearsal,
            "verdict": self.verdict(),
            "decision": self.decision(),
            "aborted": self.aborted,
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


def write_json(record: RunRecord, path: Path) -> None:
    # Scrubbed once more as a whole: nothing secret may reach the artifact by any route.
    text = json.dumps(record.as_json(), indent=2, ensure_ascii=False)
    path.write_text(record.scrubber.scrub(text) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(paths: list[Path], checksum_path: Path) -> None:
    """``sha256sum -c`` compatible, names relative to the checksum file."""
    lines = [f"{sha256_file(p)}  {p.name}" for p in paths if p.exists()]
    checksum_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
