"""Secrets on pytest's own output paths, a second line of defence behind the scrubbed
results: reports, the --debug file, internal errors and the HTML environment table."""

from __future__ import annotations

import dataclasses
import html
import io
from pathlib import Path

import pytest

from pytest_ledger_rollout.masking import Scrubber


def scrub_report(report: pytest.TestReport, scrubber: Scrubber) -> None:
    if isinstance(report.longrepr, tuple):
        path, line, reason = report.longrepr
        report.longrepr = (path, line, scrubber.scrub(reason))
    elif report.longrepr is not None:
        text = str(report.longrepr)
        cleaned = scrubber.scrub(text)
        if cleaned != text:
            report.longrepr = cleaned
    report.sections = [(title, scrubber.scrub(body)) for title, body in report.sections]


def scrub_open_file(handle: io.TextIOWrapper, scrubber: Scrubber) -> None:
    handle.flush()
    text = Path(handle.name).read_text(encoding="utf-8")
    handle.seek(0)
    handle.write(scrubber.scrub(text))
    handle.truncate()


def html_text(value: object, scrubber: Scrubber) -> object:
    """pytest-html puts environment values (and both sides of a dict's items) in the page with
    innerHTML: escaped, a recorded value such as ``<img onerror=...>`` stays text. Scrubbed
    too: pytest-metadata also prints them in the terminal header (-v)."""
    if isinstance(value, dict):
        return {html_text(k, scrubber): html_text(v, scrubber) for k, v in value.items()}
    return html.escape(scrubber.scrub(str(value)))


class InternalErrorScrubber:
    """An internal error (the database down at the gate, with ``--showlocals``) shows locals
    of library frames that hold the password in their own spelling (a libpq conninfo, a
    truncated repr): the representation is scrubbed in place before the terminal, junit XML
    or any other plugin renders it."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber

    @pytest.hookimpl(tryfirst=True)
    def pytest_internalerror(self, excrepr: object) -> None:
        _scrub_fields(excrepr, self.scrubber, set())


def _scrub_fields(node: object, scrubber: Scrubber, seen: set[int]) -> object:
    """``node`` with every string in it scrubbed; pytest's repr dataclasses in place."""
    if isinstance(node, str):
        return scrubber.scrub(node)
    if isinstance(node, list | tuple):
        return type(node)(_scrub_fields(item, scrubber, seen) for item in node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type) and id(node) not in seen:
        seen.add(id(node))
        for field in dataclasses.fields(node):
            setattr(node, field.name, _scrub_fields(getattr(node, field.name), scrubber, seen))
    return node
