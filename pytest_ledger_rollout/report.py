"""The sign-off rendering: static HTML for the pytest-html summary, and the terminal block.

pytest-html draws its results table with JavaScript, which ticket viewers often block; the
verdict, the checklist and the environment therefore go in as plain HTML."""

from __future__ import annotations

from html import escape

from .evidence import FAIL, FAILED, INCOMPLETE, INTERRUPTED, NOT_RUN, PASS, PASSED, RunRecord
from .waivers import WAIVED, WAIVED_NOT_RUN

_COLOURS = {PASS: "#1b7f3b", FAIL: "#b00020", INCOMPLETE: "#9a6700", INTERRUPTED: "#b00020"}
_STEP_COLOURS = {
    PASSED: "#1b7f3b",
    FAILED: "#b00020",
    NOT_RUN: "#9a6700",
    WAIVED: "#5b4a9e",
    WAIVED_NOT_RUN: "#5b4a9e",
}
# Evidence labelled with this prefix carries tab-separated rows (header first) and is drawn as
# a static table (e.g. the schema differences), not only as a script-drawn attachment.
TABLE_EVIDENCE = "table: "


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


def summary_html(record: RunRecord) -> str:
    verdict = record.verdict()
    steps = record.step_outcomes()
    rows = "".join(
        "<tr>"
        f"<td>{escape(s.step.id)}</td><td>{escape(s.step.title)}</td>"
        f'<td style="color:{_STEP_COLOURS[s.outcome]};font-weight:bold">{escape(s.outcome)}</td>'
        f"<td>{escape(s.evidence)}</td>"
        f"<td>{escape(s.waiver.describe()) if s.waiver else ''}</td>"
        "</tr>"
        for s in steps
    )
    waived = {s.step.id for s in steps if s.outcome == WAIVED}
    environment = "".join(
        f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>"
        for k, v in record.environment.items()
    )
    aborted = (
        f"<pre id='ledger-rollout-aborted'>{escape(record.aborted)}</pre>" if record.aborted else ""
    )
    rehearsal = (
        "<p id='ledger-rollout-rehearsal'><strong>REHEARSAL</strong>: ephemeral target, "
        "not a staging or production sign-off.</p>"
        if record.rehearsal
        else ""
    )
    failures = "".join(
        f"<h3>{escape(c.step_id)} {escape(c.name)}: {escape(c.outcome)}"
        f"{' (waived)' if c.step_id in waived else ''}</h3>"
        f"<pre>{escape(c.message)}</pre>"
        for c in record.checks
        if c.outcome in ("failed", "error")
    )
    tables = "".join(
        f"<h3>{escape(c.step_id)} {escape(e.label.removeprefix(TABLE_EVIDENCE))}</h3>"
        f"<table class='ledger-rollout-table' border='1' cellpadding='4'>{_table_rows(e.body)}"
        "</table>"
        for c in record.checks
        for e in c.evidence
        if e.label.startswith(TABLE_EVIDENCE)
    )
    html = (
        "<section id='ledger-rollout-signoff'>"
        f"<h2>{escape(record.phase.title)}</h2>"
        f"<p id='ledger-rollout-verdict' style='font-size:1.6em;font-weight:bold;"
        f"color:{_COLOURS[verdict]}'>Verdict: {escape(verdict)}"
        f"{escape(f' -> decision {decision}') if (decision := record.decision()) else ''}</p>"
        f"{rehearsal}{aborted}"
        "<h3>Runbook checklist</h3>"
        "<table id='ledger-rollout-checklist' border='1' cellpadding='4'>"
        "<tr><th>Step</th><th>Title</th><th>Outcome</th><th>Evidence</th><th>Waiver</th></tr>"
        f"{rows}</table>"
        f"{failures and '<h3>Failures</h3>' + failures}"
        f"{tables}"
        "<h3>Sign-off environment</h3>"
        f"<table id='ledger-rollout-environment' border='1' cellpadding='4'>{environment}</table>"
        "</section>"
    )
    return record.scrubber.scrub(html)


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
    return [record.scrubber.scrub(line) for line in lines]
