"""Waivers in InSpec's shape: which steps are waived, why, by whom, until when, and whether
their checks run; and what a waiver makes of a step's outcome.

```yaml
"1.3":
  justification: "constraint added by hand in INC-42; migration fix ships next release"
  expiration_date: 2026-12-31
  approver: "j.doe (DBA lead)"
  run: true        # optional, default true
```
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pytest_ledger_rollout.phases.model import Phase

WAIVED, WAIVED_NOT_RUN = "waived", "waived (not run)"
SKIP_REASON = "waived (run: false)"
_REQUIRED = ("justification", "expiration_date", "approver")
_FIELDS = (*_REQUIRED, "run")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_BYTES = 64 * 1024  # read no further: the file is parsed in memory


class WaiverError(ValueError):
    def __init__(self, path: Path, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class Waiver:
    step_id: str
    justification: str
    expiration_date: dt.date  # the last day the waiver holds (UTC)
    approver: str
    run: bool
    expired: bool  # judged once, against the run's UTC date, when the file is loaded

    @property
    def skips(self) -> bool:
        """The step's checks are not run; an expired waiver is ignored and skips nothing."""
        return not self.run and not self.expired

    def describe(self) -> str:
        """One line for the checklist: what was waived, by whom, until when."""
        approved, expiry = f"approved by {self.approver}", self.expiration_date.isoformat()
        if self.expired:
            note = f"waiver expired {expiry} ({approved}), step evaluated normally"
            return f"{note}: {self.justification}"
        skipped = "" if self.run else ", run: false"
        return f"{self.justification} ({approved}, expires {expiry}{skipped})"

    def as_json(self) -> dict[str, object]:
        return {
            "justification": self.justification,
            "expiration_date": self.expiration_date.isoformat(),
            "approver": self.approver,
            "run": self.run,
            "expired": self.expired,
        }


def waived_outcome(waiver: Waiver | None, check_outcomes: Collection[str]) -> str | None:
    """The step outcome a waiver imposes given its checks' outcomes, or None where it changes
    nothing. Only assertion failures are waived: an error means the check could not judge, so
    the step still fails; a step whose checks did not run stays not run."""
    if waiver is None or waiver.expired:
        return None
    if not waiver.run:
        return WAIVED_NOT_RUN
    if "failed" in check_outcomes and "error" not in check_outcomes:
        return WAIVED
    return None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of duplicate keys silently; a second waiver for a step must not
    quietly replace the first, so a duplicate is refused (YAML forbids them anyway).

    Anchors and aliases are refused: a few hundred bytes of nested aliases expand to billions
    of nodes (a "billion laughs"), and a waiver file has no use for them."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _timestamp_or_text(loader: _StrictLoader, node: yaml.ScalarNode) -> object:
    # An impossible date (2026-02-30) stays text for _date to refuse by key, not a crash.
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def load_waivers(path: Path, phase: Phase, today: dt.date) -> dict[str, Waiver]:
    """The file's waivers by step id; anything malformed or not a step of ``phase`` raises."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise WaiverError(path, "<file>", f"cannot read ({exc.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise WaiverError(
            path, "<file>", f"larger than {MAX_BYTES} bytes: a waiver file lists a few steps"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WaiverError(path, "<file>", "not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise WaiverError(path, "<file>", f"not valid YAML ({problem})") from None
    if data is None:  # an empty file waives nothing
        return {}
    if not isinstance(data, dict):
        raise WaiverError(
            path, "<root>", 'must map step ids to waivers, e.g. "1.3": {justification: ...}'
        )
    steps = [step.id for step in phase.steps]
    waivers = {}
    for step_id, entry in data.items():
        if not isinstance(step_id, str):
            raise WaiverError(
                path,
                repr(step_id),
                'step ids must be quoted strings, e.g. "1.4" (unquoted, YAML reads 1.10 '
                "as the number 1.1)",
            )
        if step_id not in steps:
            raise WaiverError(
                path, step_id, f"not a step of {phase.name}: use one of {', '.join(steps)}"
            )
        step = phase.step(step_id)
        if step is not None and not step.waivable:
            raise WaiverError(
                path, step_id, f"cannot be waived ({step.title}): run the predecessor phase"
            )
        waivers[step_id] = _waiver(path, step_id, entry, today)
    return waivers


def _waiver(path: Path, step_id: str, entry: object, today: dt.date) -> Waiver:
    if not isinstance(entry, dict):
        raise WaiverError(
            path, step_id, f"must be a mapping of {', '.join(_REQUIRED)} and optionally run"
        )
    for name in entry:
        if name not in _FIELDS:
            raise WaiverError(path, f"{step_id}.{name}", f"unknown field: use {', '.join(_FIELDS)}")
    for name in _REQUIRED:
        if name not in entry:
            raise WaiverError(
                path, f"{step_id}.{name}", f"missing: every waiver needs {', '.join(_REQUIRED)}"
            )
    justification = _text(path, step_id, entry, "justification")
    approver = _text(path, step_id, entry, "approver")
    expires = _date(path, step_id, entry["expiration_date"])
    run = entry.get("run", True)
    if not isinstance(run, bool):
        raise WaiverError(path, f"{step_id}.run", f"{run!r} must be true or false")
    return Waiver(step_id, justification, expires, approver, run, expired=expires < today)


def _text(path: Path, step_id: str, entry: dict[Any, Any], name: str) -> str:
    value = entry[name]
    if not isinstance(value, str) or not value.strip():
        raise WaiverError(path, f"{step_id}.{name}", "must be non-empty text")
    return value.strip()


def _date(path: Path, step_id: str, value: object) -> dt.date:
    # YAML reads an unquoted 2026-12-31 as a date, a quoted one as text: both are accepted,
    # a timestamp is not (a waiver holds for whole UTC days).
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise WaiverError(
        path, f"{step_id}.expiration_date", f"{value!r} is not a date: write YYYY-MM-DD"
    )
