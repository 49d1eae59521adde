"""Feature flags: read from a source (sql, http, file), evaluate effective states, and check
what a phase expects (which flags are on, in which order they were flipped)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import text
from sqlalchemy.engine import Connection

from .results import CheckResult, Evidence, Failure, failed, passed

SQL, HTTP, FILE = "sql", "http", "file"
FLAG_SOURCES = (SQL, HTTP, FILE)
FLAGS_TABLE = "feature_flags"  # the reference backend's; the default sql source reads it


@dataclass(frozen=True)
class FlagState:
    key: str
    tenant: str | None  # None: the global value; a tenant row overrides it
    enabled: bool
    changed_at: dt.datetime | None  # None where the source keeps no change times


@dataclass(frozen=True)
class FlagSourceConfig:
    kind: str
    query: str | None = None  # sql: returns key, tenant, enabled, changed_at
    url: str | None = None  # http: JSON list (or {"flags": [...]}) of those fields
    path: Path | None = None  # file: the same JSON


class FlagSourceError(RuntimeError):
    """The source could not be read or said something unparseable: never a pass."""


def read_flags(source: FlagSourceConfig, connection: Connection | None) -> list[FlagState]:
    if source.kind == SQL:
        assert source.query is not None
        if connection is None:
            raise FlagSourceError("the sql flag source needs the target's database")
        rows = connection.execute(text(source.query)).mappings().all()
        return [_state(dict(row), f"row {index}") for index, row in enumerate(rows)]
    if source.kind == HTTP:
        assert source.url is not None
        return _from_json(_fetch(source.url), source.url)
    assert source.path is not None
    try:
        document = json.loads(source.path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FlagSourceError(f"cannot read flag file {source.path}: {exc}") from None
    return _from_json(document, str(source.path))


def _fetch(url: str) -> Any:
    try:
        response = requests.get(url, timeout=10)
    except requests.RequestException as exc:
        raise FlagSourceError(f"flag endpoint unreachable: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise FlagSourceError(f"flag endpoint answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise FlagSourceError("flag endpoint answered something that is not JSON") from None


def _from_json(document: Any, where: str) -> list[FlagState]:
    items = document.get("flags") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise FlagSourceError(f"{where}: expected a list of flags or {{'flags': [...]}}")
    return [_state(item, f"{where} item {index}") for index, item in enumerate(items)]


def _state(item: Any, where: str) -> FlagState:
    if not isinstance(item, dict):
        raise FlagSourceError(f"{where}: not an object")
    key, tenant, enabled = item.get("key"), item.get("tenant"), item.get("enabled")
    if not isinstance(key, str) or not key:
        raise FlagSourceError(f"{where}: 'key' missing")
    if tenant is not None and not isinstance(tenant, str):
        raise FlagSourceError(f"{where}: 'tenant' must be a string or null")
    if not isinstance(enabled, bool):
        raise FlagSourceError(f"{where}: 'enabled' must be true or false, not {enabled!r}")
    return FlagState(key, tenant, enabled, _timestamp(item.get("changed_at"), where))


def _timestamp(value: Any, where: str) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return _aware(value)
    if isinstance(value, str):
        try:
            return _aware(dt.datetime.fromisoformat(value))
        except ValueError:
            pass
    raise FlagSourceError(f"{where}: 'changed_at' is not an ISO timestamp: {value!r}")


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)  # sources without zones report UTC
    return value


def _render(states: Iterable[FlagState]) -> str:
    return "\n".join(
        f"{s.key} {s.tenant or '(global)'} {'on' if s.enabled else 'off'} "
        f"{s.changed_at.isoformat() if s.changed_at else '(no change time)'}"
        for s in sorted(states, key=lambda s: (s.key, s.tenant or ""))
    )


def check_on_everywhere(states: Sequence[FlagState], keys: Sequence[str]) -> CheckResult:
    """Each key is on globally and no tenant overrides it off."""
    if not keys:
        return failed(
            Failure(
                "No flag is configured for this step",
                expected="at least one flag the step turns on",
                seen="an empty list in the rollout config",
                remedy="Name the step's flags under [flags.steps] in the rollout config.",
            )
        )
    evidence = Evidence("flag states", _render(s for s in states if s.key in keys))
    problems = []
    for key in keys:
        global_rows = [s for s in states if s.key == key and s.tenant is None]
        if not global_rows:
            problems.append(f"{key}: no global value (missing means off)")
        elif not global_rows[0].enabled:
            problems.append(f"{key}: off globally")
        off_tenants = sorted(
            s.tenant for s in states if s.key == key and s.tenant and not s.enabled
        )
        if off_tenants:
            problems.append(f"{key}: overridden off for {', '.join(off_tenants[:10])}")
    if problems:
        return failed(
            Failure(
                "Flags that must be on are not on everywhere",
                expected=", ".join(keys) + ": on globally, no tenant override off",
                seen="\n".join(problems),
                remedy="Turn the flags on in the order the runbook gives, then rerun the phase.",
            ),
            evidence,
        )
    return passed(", ".join(f"{key}=on" for key in keys), evidence)


def check_flip_order(states: Sequence[FlagState], order: Sequence[str]) -> CheckResult:
    """Where the source keeps change times, the global flips happened in runbook order."""
    flips = {s.key: s.changed_at for s in states if s.tenant is None and s.key in order}
    evidence = Evidence("global flips", _render(s for s in states if s.tenant is None))
    missing = [key for key in order if flips.get(key) is None]
    if missing:
        return failed(
            Failure(
                "The flip order cannot be proven",
                expected="a change time for each of " + ", ".join(order),
                seen="no change time for " + ", ".join(missing),
                remedy="Use a flag source that keeps change times (e.g. feature_flags.changed_at).",
            ),
            evidence,
        )
    times = [(key, flips[key]) for key in order]
    wrong = [
        f"{later} ({t_later:%Y-%m-%d %H:%M:%S}) before {earlier} ({t_earlier:%Y-%m-%d %H:%M:%S})"
        for (earlier, t_earlier), (later, t_later) in pairwise(times)
        if t_earlier is not None and t_later is not None and t_later < t_earlier
    ]
    if wrong:
        return failed(
            Failure(
                "Flags were flipped out of runbook order",
                expected=" -> ".join(order),
                seen="\n".join(wrong),
                remedy=(
                    "Turn the later flags off, then on again in the runbook's order, checking "
                    "each step's definition of done before the next flip."
                ),
            ),
            evidence,
        )
    return passed("flipped in order: " + " -> ".join(order), evidence)


def flip_time(states: Sequence[FlagState], key: str) -> dt.datetime | None:
    return next((s.changed_at for s in states if s.key == key and s.tenant is None), None)
