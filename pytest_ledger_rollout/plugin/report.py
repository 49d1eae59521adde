"""The sign-off rendering: static HTML for the pytest-html summary, and the terminal block.

pytest-html draws its environment and results tables with JavaScript, which ticket viewers
often block. Everything an approver needs therefore goes in as plain HTML: the verdict first,
the REHEARSAL banner, the checklist, every check with its finding and evidence (``<details>``,
no scripts, no ``data:`` links), and the environment. A style sheet moves this section above
pytest-html's own tables and hides what is dead or duplicated without scripts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from html import escape
from typing import Any

import pytest

from pytest_ledger_rollout.phases.signoff import (
    FAILED,
    NOT_RUN,
    PASSED,
    CheckRecord,
    RunRecord,
    StepOutcome,
    Verdict,
    count_outcomes,
)
from pytest_ledger_rollout.phases.waivers import WAIVED, WAIVED_NOT_RUN
from pytest_ledger_rollout.plugin.state import RunState
from pytest_ledger_rollout.results import Evidence, Failure

_COLOURS = {
    Verdict.PASS: "#1b7f3b",
    Verdict.FAIL: "#b00020",
    Verdict.INCOMPLETE: "#9a6700",
    Verdict.INTERRUPTED: "#b00020",
}
_STEP_COLOURS = {
    PASSED: "#1b7f3b",
    FAILED: "#b00020",
    NOT_RUN: "#9a6700",
    WAIVED: "#5b4a9e",
    WAIVED_NOT_RUN: "#5b4a9e",
}
_CHECK_COLOURS = {"passed": "#1b7f3b", "failed": "#b00020", "error": "#b00020"}
EVIDENCE_SHOWN = 4000  # characters of one evidence block in the page; the JSON has it all
REHEARSAL_NOTICE = "REHEARSAL: ephemeral target, not a staging or production sign-off"

# The sign-off comes first with scripts on or off; pytest-html's environment table (Python,
# packages) is not the sign-off's, and its results table and filters are dead without scripts.
_STYLE = """
body { display: flex; flex-direction: column; }
#title { order: -3; }
.summary { order: -2; }
.summary__data { display: flex; flex-direction: column; }
.additional-summary.prefix { order: -1; }
#environment-header, #environment { display: none; }
#results-table:not(:has(tbody)), body:not(:has(#results-table tbody)) .controls,
body:not(:has(#results-table tbody)) p.filter { display: none; }
#ledger-rollout-signoff pre { white-space: pre-wrap; word-break: break-word; margin: 0.3em 0; }
#ledger-rollout-signoff details { margin: 0.3em 0 0.3em 1em; }
#ledger-rollout-signoff summary { cursor: pointer; }
.ledger-rollout-banner { font-size: 1.6em; font-weight: bold; padding: 0.3em 0.5em;
  border: 3px solid #9a6700; color: #9a6700; }
.ledger-rollout-finding { border-left: 4px solid #b00020; padding-left: 0.6em; }
.ledger-rollout-finding h5 { margin: 0.4em 0 0 0; }
"""


def verdict_line(record: RunRecord) -> str:
    line = f"{record.phase.name} on {record.target} ({record.target_kind}): {record.verdict()}"
    decision = record.decision()
    if decision is not None:
        line += f" -> {decision}"
    if record.rehearsal:
        line += " (REHEARSAL: ephemeral target, not a staging or production sign-off)"
    # The one line pasted into tickets must not present a waived step as a plain PASS.
    waived = [s.step.id for s in record.step_outcomes() if s.outcome in (WAIVED, WAIVED_NOT_RUN)]
    if waived:
        line += f" (waived: {', '.join(waived)})"
    if record.aborted:
        line += f" (stopped: {record.aborted.splitlines()[0]})"
    elif record.interrupted:
        line += f" ({record.interrupted})"
    return line


def report_title(record: RunRecord) -> str:
    """The page's first line: what is signed off (pytest-html asks before the run ends, so the
    verdict comes right below it, not in it)."""
    release = f", release {record.release}" if record.release else ""
    rehearsal = "REHEARSAL of " if record.rehearsal else ""
    return (
        f"Sign-off: {rehearsal}{record.phase.name} on {record.target} "
        f"({record.target_kind}{release})"
    )


def summary_html(record: RunRecord) -> str:
    verdict = record.verdict()
    decision = record.decision()
    steps = record.step_outcomes()
    shown = f"Verdict: {verdict}" + (f" -> decision {decision}" if decision is not None else "")
    banner = (
        f"<p id='ledger-rollout-rehearsal' class='ledger-rollout-banner'>{REHEARSAL_NOTICE}</p>"
        if record.rehearsal
        else ""
    )
    stopped = record.aborted or record.interrupted
    release = record.release or "(none given)"
    html = (
        f"<style>{_STYLE}</style>"
        "<section id='ledger-rollout-signoff'>"
        f"<p id='ledger-rollout-verdict' style='font-size:1.8em;font-weight:bold;"
        f"color:{_COLOURS[verdict]}'>{escape(shown)}</p>"
        f"{banner}"
        f"<h2>{escape(record.phase.heading(record.target_kind))}</h2>"
        f"<p id='ledger-rollout-facts'>Target <b>{escape(record.target)}</b> "
        f"({escape(record.target_kind)}), release <b>{escape(release)}</b></p>"
        + (f"<pre id='ledger-rollout-stopped'>{escape(stopped)}</pre>" if stopped else "")
        + "<h3>Runbook checklist</h3>"
        "<table id='ledger-rollout-checklist' border='1' cellpadding='4'>"
        "<tr><th>Step</th><th>Title</th><th>Outcome</th><th>Checks</th><th>Evidence</th>"
        "<th>Waiver</th></tr>" + "".join(_checklist_row(s) for s in steps) + "</table>"
        "<h3>Checks and their evidence</h3>"
        + "".join(_step_details(s) for s in steps)
        + "<h3>Sign-off environment</h3>"
        "<table id='ledger-rollout-environment' border='1' cellpadding='4'>"
        + "".join(
            f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>"
            for k, v in record.environment.items()
        )
        + "</table></section>"
    )
    return record.scrubber.scrub(html)


def _checklist_row(step: StepOutcome) -> str:
    return (
        "<tr>"
        f"<td>{escape(step.step.id)}</td><td>{escape(step.step.title)}</td>"
        f"<td style='color:{_STEP_COLOURS[step.outcome]};font-weight:bold'>"
        f"{escape(step.outcome)}</td>"
        f"<td>{escape(check_counts(step.checks))}</td>"
        f"<td>{escape(step.evidence)}</td>"
        f"<td>{escape(step.waiver.describe()) if step.waiver else ''}</td>"
        "</tr>"
    )


def check_counts(checks: Iterable[CheckRecord]) -> str:
    """``3 passed, 1 failed``: each outcome's count, in a fixed order."""
    counts = count_outcomes(checks)
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n) or "no check"


def _step_details(step: StepOutcome) -> str:
    waived = " (waived)" if step.outcome == WAIVED else ""
    checks = "".join(_check_details(c, waived) for c in step.checks) or (
        f"<p>{escape(step.evidence)}</p>"
    )
    waiver = f"<p>Waiver: {escape(step.waiver.describe())}</p>" if step.waiver else ""
    return (
        f"<h4 id='ledger-rollout-step-{escape(step.step.id)}'>{escape(step.step.id)} "
        f"{escape(step.step.title)}: <span style='color:{_STEP_COLOURS[step.outcome]}'>"
        f"{escape(step.outcome)}</span></h4>{waiver}{checks}"
    )


def _check_details(check: CheckRecord, waived: str) -> str:
    bad = check.outcome in ("failed", "error")
    colour = _CHECK_COLOURS.get(check.outcome, "#9a6700")
    body = _finding_html(check.failure) if check.failure is not None else ""
    if check.outcome == "error" or (bad and check.failure is None):
        # Not a finding of the runbook's: the cause stays visible, the traceback collapsed.
        cause = check.summary
        body += f"<pre class='ledger-rollout-error'>{escape(cause)}</pre>"
        if check.message:
            body += f"<details><summary>debug</summary><pre>{escape(check.message)}</pre></details>"
    body += "".join(_evidence_html(e) for e in check.evidence if not e.table)
    # Tables (the OPS-02 figures, schema differences) are what an approver decides on: shown
    # open below the check, not folded away.
    tables = "".join(_evidence_html(e) for e in check.evidence if e.table)
    return (
        f"<details class='ledger-rollout-check'{' open' if bad else ''}>"
        f"<summary><b style='color:{colour}'>{escape(check.outcome)}{waived if bad else ''}</b> "
        f"{escape(check.name)}: {escape(check.summary)}</summary>{body}</details>{tables}"
    )


def _finding_html(failure: Failure) -> str:
    return (
        "<div class='ledger-rollout-finding'>"
        + "".join(f"<h5>{title}</h5><pre>{escape(text)}</pre>" for title, text in failure.blocks())
        + "</div>"
    )


def _evidence_html(evidence: Evidence) -> str:
    if evidence.table:
        return (
            f"<h5>{escape(evidence.label)}</h5>"
            f"<table class='ledger-rollout-table' border='1' cellpadding='4'>"
            f"{_table_rows(evidence.body)}</table>"
        )
    body = evidence.body
    if len(body) > EVIDENCE_SHOWN:
        cut = len(body) - EVIDENCE_SHOWN
        body = f"{body[:EVIDENCE_SHOWN]}\n… {cut} more characters: the full text is in the JSON"
    return f"<h5>{escape(evidence.label)}</h5><pre>{escape(body)}</pre>"


def _table_rows(body: str) -> str:
    header, *rows = body.splitlines()
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header.split("\t"))
    cells = (
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row.split("\t")) + "</tr>"
        for row in rows
    )
    return f"<tr>{head}</tr>" + "".join(cells)


def terminal_lines(record: RunRecord) -> list[str]:
    lines = [f"VERDICT: {verdict_line(record)}"]
    for step in record.step_outcomes():
        lines.append(f"  [{step.outcome:^7}] {step.step.id} {step.step.title}")
        lines.append(f"            {step.evidence}")
        if step.waiver:
            lines.append(f"            waiver: {step.waiver.describe()}")
        lines.extend(_failure_lines(step))
    return [record.scrubber.scrub(line) for line in lines]


def _failure_lines(step: StepOutcome) -> Iterator[str]:
    """A failed check's finding reads Expected / Seen / What to do, right under its step."""
    for check in step.checks:
        if check.failure is None:
            continue
        yield f"            ✗ {check.name}: {check.failure.title}"
        for title, text in check.failure.blocks():
            yield f"              {title}:"
            yield from (f"                {line}" for line in text.splitlines()[:12])


class SignoffHtml:
    """pytest-html hooks, registered only for a phase run (the hooks exist with pytest-html)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def pytest_html_report_title(self, report: Any) -> None:
        report.title = self.state.scrubber.scrub(report_title(self.state.record))

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        prefix.append(summary_html(self.state.record))
