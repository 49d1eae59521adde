"""Feature flags: one model for every phase. Where the flags live (``[flags]``: a table, an HTTP
endpoint or a file), the effective-state rule in its two forms (SQL for set-based checks, Python
over rows), and what STG-ROLL expects (which flags are on, in which order they were flipped).

The rule: a tenant's own row beats the global row (tenant NULL); with neither the flag is off.
Its flip time is the change time of the row that decides: the tenant's own row if it has one,
else the global row's (None where the source keeps no change times)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.masking import mask_url
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed

SQL, HTTP, FILE = "sql", "http", "file"
FLAG_SOURCES = (SQL, HTTP, FILE)
TENANT_ROW, GLOBAL_ROW, NO_ROW = "tenant row", "global row", "no row"

Quote = Callable[[str], str]


@dataclass(frozen=True)
class FlagState:
    key: str
    tenant: str | None  # None: the global value; a tenant row overrides it
    enabled: bool
    changed_at: dt.datetime | None  # None where the source keeps no change times


@dataclass(frozen=True)
class FlagTable:
    """Where the sql source's flags live: one row per key and tenant, tenant NULL for the global
    value (defaults: the reference backend's ``feature_flags``)."""

    table: str = "feature_flags"
    key: str = "key"
    tenant: str = "tenant_id"
    enabled: str = "enabled"
    changed_at: str = "changed_at"

    def select(self, q: Quote) -> str:
        """The rows as (key, tenant, enabled, changed_at); ids compare as text everywhere."""
        return (
            f"SELECT {q(self.key)}::text AS key, {q(self.tenant)}::text AS tenant, "
            f"{q(self.enabled)} AS enabled, {q(self.changed_at)} AS changed_at "
            f"FROM {q(self.table)}"
        )

    def insert(self, q: Quote) -> str:
        """One row, from parameters :key, :tenant, :enabled, :changed_at (rehearsals only)."""
        columns = ", ".join(q(c) for c in (self.key, self.tenant, self.enabled, self.changed_at))
        return (
            f"INSERT INTO {q(self.table)} ({columns}) VALUES (:key, :tenant, :enabled, :changed_at)"
        )


@dataclass(frozen=True)
class FlagSourceConfig:
    kind: str
    table: FlagTable = field(default_factory=FlagTable)  # sql: the table and its columns
    query: str | None = None  # sql: instead of the table, rows as key, tenant, enabled, changed_at
    # http: JSON list (or {"flags": [...]}) of the rows' four fields; it may carry user:password@
    url: str | None = field(default=None, repr=False)
    path: Path | None = None  # file: the same JSON

    def rows_sql(self, q: Quote) -> str:
        """sql: the statement whose rows are the flags (the configured query, else the table's)."""
        return self.query if self.query is not None else self.table.select(q)


class FlagSourceError(RuntimeError):
    """The source could not be read or said something unparseable: never a pass."""


def _quote(connection: Connection) -> Quote:
    return connection.dialect.identifier_preparer.quote


def read_flags(source: FlagSourceConfig, connection: Connection | None) -> list[FlagState]:
    if source.kind == SQL:
        if connection is None:
            raise FlagSourceError("the sql flag source needs the target's database")
        rows = connection.execute(text(source.rows_sql(_quote(connection)))).mappings().all()
        states = [_state(dict(row), f"row {index}") for index, row in enumerate(rows)]
    elif source.kind == HTTP:
        assert source.url is not None
        states = _from_json(_fetch(source.url), f"flag endpoint {mask_url(source.url)}")
    else:
        assert source.path is not None
        try:
            document = json.loads(source.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FlagSourceError(f"cannot read flag file {source.path}: {exc}") from None
        states = _from_json(document, str(source.path))
    # Two rows for one key and tenant would let the rule's two forms pick different ones.
    seen: set[tuple[str | None, str]] = set()
    for state in states:
        if (state.tenant, state.key) in seen:
            where = state.tenant or "the global value"
            raise FlagSourceError(f"{state.key} is given twice for {where}")
        seen.add((state.tenant, state.key))
    return states


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


# ---------------------------------------------------------------------------------------------
# The effective-state rule. Both forms decide the same (tests/test_flags.py proves it on a shared
# set of rows): keep them side by side and change them together.


@dataclass(frozen=True)
class Effective:
    tenant: str | None  # None: a tenant without rows of its own (what the global row gives)
    key: str
    enabled: bool
    changed_at: dt.datetime | None  # the flip time: the deciding row's change time
    source: str  # TENANT_ROW, GLOBAL_ROW or NO_ROW


def effective(
    states: Sequence[FlagState], tenants: Iterable[str | None], keys: Sequence[str]
) -> list[Effective]:
    """The rule in Python, over rows from any source: per tenant and key."""
    rows = {(s.tenant, s.key): s for s in states}
    found = []
    for tenant in tenants:
        for key in keys:
            own = rows.get((tenant, key)) if tenant is not None else None
            glob = rows.get((None, key))
            if own is not None:
                found.append(Effective(tenant, key, own.enabled, own.changed_at, TENANT_ROW))
            elif glob is not None:
                found.append(Effective(tenant, key, glob.enabled, glob.changed_at, GLOBAL_ROW))
            else:
                found.append(Effective(tenant, key, False, None, NO_ROW))
    return found


def effective_cte(tenant_ids: str) -> str:
    """The rule in SQL: ``effective(tenant, key, enabled, changed_at, source)`` for every tenant
    ``tenant_ids`` selects (a column ``tenant``) and each of ``:keys``, over the ``flag_rows``
    relation (``FlagRelation.cte``) defined before it in the same WITH."""
    return f"""effective AS (
        SELECT t.tenant, k.key,
               CASE WHEN own.key IS NOT NULL THEN own.enabled
                    ELSE coalesce(glob.enabled, false) END AS enabled,
               CASE WHEN own.key IS NOT NULL THEN own.changed_at ELSE glob.changed_at END
                   AS changed_at,
               CASE WHEN own.key IS NOT NULL THEN '{TENANT_ROW}'
                    WHEN glob.key IS NOT NULL THEN '{GLOBAL_ROW}' ELSE '{NO_ROW}' END AS source
        FROM ({tenant_ids}) t CROSS JOIN unnest(CAST(:keys AS text[])) AS k(key)
        LEFT JOIN flag_rows glob ON glob.key = k.key AND glob.tenant IS NULL
        LEFT JOIN flag_rows own ON own.key = k.key AND own.tenant = t.tenant
    )"""


@dataclass(frozen=True)
class FlagRelation:
    """The flag rows as one SQL relation, ``flag_rows(key, tenant, enabled, changed_at)``, so a
    check over all tenants stays one statement whatever the source: the sql source's table
    itself, or the rows an http/file source reported, bound as array parameters."""

    rows_sql: str | None = None  # the sql source's statement
    states: tuple[FlagState, ...] = ()  # what another source reported

    @classmethod
    def of(cls, source: FlagSourceConfig, connection: Connection) -> FlagRelation:
        if source.kind == SQL:
            return cls(source.rows_sql(_quote(connection)))
        return cls(states=tuple(read_flags(source, connection)))

    def cte(self) -> str:
        # The newline keeps a configured query's trailing -- comment off the parenthesis.
        rows = (
            f"{self.rows_sql}\n"
            if self.rows_sql is not None
            else "SELECT * FROM unnest(CAST(:flag_keys AS text[]), CAST(:flag_tenants AS text[]),"
            " CAST(:flag_enabled AS boolean[]), CAST(:flag_changed_at AS timestamptz[]))"
            " AS f(key, tenant, enabled, changed_at)"
        )
        return f"flag_rows AS ({rows})"

    def params(self) -> dict[str, Any]:
        if self.rows_sql is not None:
            return {}
        return {
            "flag_keys": [s.key for s in self.states],
            "flag_tenants": [s.tenant for s in self.states],
            "flag_enabled": [s.enabled for s in self.states],
            "flag_changed_at": [s.changed_at for s in self.states],
        }


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
    tenants = sorted({s.tenant for s in states if s.tenant is not None})
    problems = []
    for key in keys:
        # Tenant None stands for every tenant without a row of its own: the global value.
        states_of_key = effective(states, [None, *tenants], [key])
        default = states_of_key[0]
        if default.source == NO_ROW:
            problems.append(f"{key}: no global value (missing means off)")
        elif not default.enabled:
            problems.append(f"{key}: off globally")
        off_tenants = [
            str(e.tenant) for e in states_of_key[1:] if e.source == TENANT_ROW and not e.enabled
        ]
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
    flips = {key: flip_time(states, key) for key in order}
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
    """When ``key`` last changed for tenants without rows of their own (its global flip)."""
    return effective(states, [None], [key])[0].changed_at
