"""Result objects that domain checks return, and the failure they raise through the suite.

Domain modules know nothing of pytest: they return ``CheckResult``. A suite test hands it to
the ``recorder`` fixture, which records the evidence and raises ``DodFailure`` when it failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Evidence:
    """What a check ran and what it saw (SQL and rows, a command and its output, facts)."""

    label: str
    body: str
    # The body is tab-separated rows, header first: the report draws it as a static table
    # (schema differences, the OPS-02 figures).
    table: bool = False


def table_evidence(title: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Evidence:
    lines = ["\t".join(header), *("\t".join(row) for row in rows)]
    return Evidence(title, "\n".join(lines), table=True)


@dataclass(frozen=True)
class Failure:
    """Why a check failed, in the runbook's terms."""

    title: str
    expected: str
    seen: str
    remedy: str

    def blocks(self) -> tuple[tuple[str, str], ...]:
        """The finding as an approver reads it: headed blocks, in this order."""
        return (("Expected", self.expected), ("Seen", self.seen), ("What to do", self.remedy))


@dataclass(frozen=True)
class CheckResult:
    summary: str  # one line for the checklist: what was seen
    evidence: tuple[Evidence, ...] = ()
    failure: Failure | None = None
    facts: dict[str, str] = field(default_factory=dict)  # environment facts learned on the way

    @property
    def ok(self) -> bool:
        return self.failure is None


def passed(summary: str, *evidence: Evidence, **facts: str) -> CheckResult:
    return CheckResult(summary=summary, evidence=evidence, facts=facts)


def failed(failure: Failure, *evidence: Evidence, **facts: str) -> CheckResult:
    return CheckResult(summary=failure.title, evidence=evidence, failure=failure, facts=facts)


class DodFailure(AssertionError):
    """A definition-of-done check that did not hold; reads as titled blocks."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        super().__init__(failure.title)

    def __str__(self) -> str:
        lines = [self.failure.title]
        for heading, body in self.failure.blocks():
            lines.append(f"{heading}:")
            lines.extend(f"    {line}" for line in body.splitlines() or [""])
        return "\n".join(lines)
