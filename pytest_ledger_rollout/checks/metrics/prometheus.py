"""A fail-closed client for the Prometheus HTTP API (instant queries at a pinned time).

Every answer that is not a clean, complete, finite instant vector raises ``PrometheusError``
with the reason, what was seen and what to do; nothing is guessed or silently dropped:
warnings (a partial answer) are refused, NaN/Inf are refused, two series under one key are
refused (never "last one wins"), and an empty vector is "no series" unless the caller says
empty is allowed. Each successful query keeps its evidence (PromQL, time, HTTP status, values).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import requests

from pytest_ledger_rollout.masking import Scrubber, mask_url
from pytest_ledger_rollout.results import Evidence, Failure

# Evidence stays compact: a per-tenant vector over 1,000 tenants is cut to this many lines.
MAX_EVIDENCE_SERIES = 20
BODY_EXCERPT = 200


class PrometheusError(Exception):
    """A query that gave no usable answer; ``reason`` is a short machine-readable kind."""

    def __init__(self, reason: str, detail: str, remedy: str, evidence: Evidence) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.remedy = remedy
        self.evidence = evidence

    def failure(self, expected: str) -> Failure:
        return Failure(
            f"Prometheus gave no usable answer ({self.reason})",
            expected=expected,
            seen=self.detail,
            remedy=self.remedy,
        )


@dataclass(frozen=True)
class InstantVector:
    """A query's answer keyed by the values of ``key_labels`` (``()``: a single series)."""

    promql: str
    at: datetime
    http_status: int
    key_labels: tuple[str, ...]
    values: Mapping[tuple[str, ...], float]

    def single(self) -> float | None:
        """The one value of an unkeyed query; None when the vector is empty (no series)."""
        return self.values.get(())

    def evidence(self) -> Evidence:
        lines = [
            f"query: {self.promql}",
            f"time: {iso_utc(self.at)}",
            f"HTTP {self.http_status}, {len(self.values)} series",
        ]
        shown = sorted(self.values.items())[:MAX_EVIDENCE_SERIES]
        lines += [f"{_key_text(self.key_labels, key)} = {value:g}" for key, value in shown]
        if len(self.values) > len(shown):
            lines.append(f"… {len(self.values) - len(shown)} more series")
        return Evidence(f"PromQL @ {iso_utc(self.at)}", "\n".join(lines))


@dataclass(repr=False)
class PrometheusClient:
    """``base_url`` is Prometheus' root (``http://host:9090`` or a path prefix behind a proxy).

    ``headers`` (e.g. ``Authorization``) are sent with every request and scrubbed from every
    message; the client logs nothing.
    """

    base_url: str
    timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    _session: requests.Session = field(init=False)
    _scrubber: Scrubber = field(init=False)

    def __post_init__(self) -> None:
        self._session = requests.Session()
        self._session.headers.update(self.headers)
        self._scrubber = Scrubber()
        self._scrubber.register_url(self.base_url)
        for value in self.headers.values():
            self._scrubber.register(value)
            self._scrubber.register(value.partition(" ")[2])  # the token of "Bearer <token>"

    def __repr__(self) -> str:
        return f"PrometheusClient({self.where!r}, timeout={self.timeout:g})"

    @property
    def where(self) -> str:
        """The server as it may be shown: ``host:port/prefix``, never credentials."""
        return mask_url(self.base_url)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def query(
        self, promql: str, at: datetime, *, key: Sequence[str] = (), allow_empty: bool = False
    ) -> InstantVector:
        """Evaluate ``promql`` at ``at`` (timezone-aware) and return a finite instant vector.

        ``key``: the labels that identify a series in the answer; two series with the same key
        values are refused. With the default ``()`` the answer must be a single series.
        """
        if at.tzinfo is None:
            raise ValueError("the evaluation time must be timezone-aware")
        key_labels = tuple(key)
        seen = _Seen(promql, at)
        try:
            response = self._session.post(
                self.base_url.rstrip("/") + "/api/v1/query",
                # Prometheus' own timeout stops the evaluation when we stop waiting for it.
                data={"query": promql, "time": f"{at.timestamp():.3f}", "timeout": self.timeout},
                timeout=self.timeout,
            )
        except requests.Timeout as exc:
            raise seen.error(
                "timeout",
                f"no answer from {self.where} within {self.timeout:g} s ({type(exc).__name__})",
                "Check Prometheus' health and load (is it up, is the query too heavy?); "
                "rerun, or raise the metrics timeout in the config.",
            ) from None
        except requests.RequestException as exc:
            raise seen.error(
                "unreachable",
                f"cannot reach {self.where}: {self._scrubber.scrub(_root_cause(exc))}",
                f"Check that Prometheus is up and reachable from here "
                f"(curl {self.where}/-/ready) and that the metrics URL in the config is right.",
            ) from None
        seen.status = response.status_code
        payload = self._json(response, seen)
        if not response.ok or payload.get("status") != "success":
            raise seen.error(
                "error answer",
                f"HTTP {response.status_code}, status={payload.get('status')!r}, "
                f"errorType={payload.get('errorType')!r}: {payload.get('error')!r}",
                _ERROR_REMEDIES.get(
                    str(payload.get("errorType")),
                    "Read Prometheus' error above, fix its cause and rerun.",
                ),
            )
        if payload.get("warnings"):
            raise seen.error(
                "degraded answer",
                f"Prometheus answered with warnings: {payload['warnings']!r}",
                "The answer may be partial (a failing remote store or shard). Fix the cause "
                "of the warnings and rerun; a partial answer is never taken as a pass.",
            )
        data = payload.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            result_type = data.get("resultType") if isinstance(data, dict) else None
            raise seen.error(
                "unexpected result type",
                f"resultType={result_type!r}, expected 'vector'",
                "The query must return an instant vector: wrap a scalar in vector(...) and "
                "do not pass a range selector without a function such as increase().",
            )
        values = _keyed_values(data.get("result"), key_labels, seen)
        if not values and not allow_empty:
            raise seen.error(
                "no series",
                "the query returned an empty vector: no series matched (not the same as 0)",
                "Check that the service exports the metric (curl its /metrics), that the "
                "scrape target is up (up == 1) and that the window holds at least two samples; "
                "if the metric is legitimately absent until its first event, export its known "
                "label sets at 0 or declare that empty means zero for this query.",
            )
        return InstantVector(promql, at, response.status_code, key_labels, values)

    def _json(self, response: requests.Response, seen: _Seen) -> dict[str, Any]:
        content_type = response.headers.get("Content-Type", "?")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            excerpt = self._scrubber.scrub(response.text[:BODY_EXCERPT])
            raise seen.error(
                "not JSON",
                f"HTTP {response.status_code} with a {content_type} body, not the API's JSON: "
                f"{excerpt!r}",
                "Something other than Prometheus answered (a proxy, a login page or a wrong "
                "path): point the metrics URL at Prometheus' API root and give the auth "
                "headers the proxy expects.",
            )
        return payload


_ERROR_REMEDIES = {
    "bad_data": "Fix the PromQL in the config (test it in the Prometheus UI) and rerun.",
    "execution": "The query failed while running (e.g. many-to-many matching or too many "
    "samples): narrow or aggregate it in the config and rerun.",
    "timeout": "Prometheus gave up on the query: narrow it or raise the metrics timeout.",
    "unavailable": "Prometheus is not ready (starting up or overloaded): wait and rerun.",
}


@dataclass
class _Seen:
    """What a query had seen when it failed, turned into evidence on the error."""

    promql: str
    at: datetime
    status: int | None = None

    def error(self, reason: str, detail: str, remedy: str) -> PrometheusError:
        status = "no HTTP answer" if self.status is None else f"HTTP {self.status}"
        body = f"query: {self.promql}\ntime: {iso_utc(self.at)}\n{status}: {reason}\n{detail}"
        return PrometheusError(
            reason, detail, remedy, Evidence(f"PromQL @ {iso_utc(self.at)}", body)
        )


def _keyed_values(
    result: object, key_labels: tuple[str, ...], seen: _Seen
) -> dict[tuple[str, ...], float]:
    if not isinstance(result, list):
        raise seen.error("malformed answer", f"result is {type(result).__name__}", _MALFORMED)
    values: dict[tuple[str, ...], float] = {}
    for item in result:
        try:
            labels: dict[str, str] = item["metric"]
            raw = item["value"][1]
            value = float(raw)
        except (TypeError, KeyError, IndexError, ValueError):
            raise seen.error(
                "malformed answer", f"unreadable series {item!r}", _MALFORMED
            ) from None
        missing = [label for label in key_labels if label not in labels]
        if missing:
            raise seen.error(
                "unkeyed series",
                f"series {_labels_text(labels)} lacks key label(s) {', '.join(missing)}",
                f"Aggregate the query by ({', '.join(key_labels)}) so every series carries it.",
            )
        key = tuple(labels[label] for label in key_labels)
        if key in values:
            raise seen.error(
                "duplicate series",
                f"more than one series for {_key_text(key_labels, key)}, e.g. "
                f"{_labels_text(labels)}; refusing to pick one",
                f"Aggregate the query so it yields one series per key, e.g. "
                f"sum by ({', '.join(key_labels)}) (...)"
                if key_labels
                else "Aggregate the query to one series, e.g. sum(...).",
            )
        if not math.isfinite(value):
            raise seen.error(
                "not a finite value",
                f"{_key_text(key_labels, key)} = {raw!r}",
                "Find why the series is NaN or infinite (a division by zero, a gauge "
                "exported as NaN, a counter with no samples in the window) and fix the query "
                "or the exporter; a NaN is never read as 0.",
            )
        values[key] = value
    return values


_MALFORMED = "The answer does not follow Prometheus' API: check what serves the metrics URL."


def _root_cause(exc: BaseException) -> str:
    """The innermost message (e.g. '[Errno 111] Connection refused'), not requests' wrapping."""
    cause: BaseException | None = exc
    while cause is not None:
        exc, cause = cause, cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def _key_text(key_labels: tuple[str, ...], key: tuple[str, ...]) -> str:
    if not key_labels:
        return "{}"
    return (
        "{"
        + ", ".join(f'{label}="{value}"' for label, value in zip(key_labels, key, strict=True))
        + "}"
    )


def _labels_text(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"))


def iso_utc(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
