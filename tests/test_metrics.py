"""The metrics layer against a real Prometheus: the client's fail-closed answers and the
STG-ROLL 2.3 webhook-401 watch, on backfilled histories and on a live scraped target.

One Prometheus serves the whole module. Each history scenario lives in its own slot of time
two days back (60 min before its flip, 60 min after), so the shipped default queries work
unchanged and every query is pinned inside its slot. The live target is scraped from the
start; Prometheus only begins scraping ~5 s after start (its discovery update interval), so
the live test comes last.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pytest_ledger_rollout.checks.metrics import (
    PrometheusClient,
    PrometheusError,
    WebhookWatchThresholds,
    webhook_401_watch,
)
from pytest_ledger_rollout.results import CheckResult
from pytest_ledger_rollout.targets.prometheus_server import (
    INSTALL_HINT,
    PrometheusServer,
    Series,
    start_prometheus,
)

from .loopback_http import LoopbackHTTP, Reply
from .support import require_prometheus

BASE = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
SLOT = timedelta(hours=4)
TENANT = {"tenant": "t-1"}
UNAUTHORIZED = {"route": "/webhooks/deposit", "status": "401", "code": "WEBHOOK_SIGNATURE_INVALID"}


@dataclass(frozen=True)
class History:
    """Webhook requests and 401s per minute, before and after the flip."""

    requests: tuple[float, float]
    unauthorized: tuple[float, float] | None  # None: the 401 series is never exported
    broken_after_flip: bool = False  # the 401 counter reads NaN after the flip


SCENARIOS = {
    "steady": History(requests=(100, 100), unauthorized=(0.5, 0.6)),
    "surge": History(requests=(100, 100), unauthorized=(0.5, 10)),
    "zero_then_surge": History(requests=(100, 100), unauthorized=(0, 0.3)),
    "zero_then_blip": History(requests=(100, 100), unauthorized=(0, 2 / 30)),
    "zero_busy": History(requests=(100, 100), unauthorized=(0, 0)),
    "zero_quiet": History(requests=(2, 2), unauthorized=(0, 0)),
    "no_401_series": History(requests=(100, 100), unauthorized=None),
    "nan": History(requests=(100, 100), unauthorized=(0, 0), broken_after_flip=True),
}


def flip_at(scenario: str) -> datetime:
    return BASE + list(SCENARIOS).index(scenario) * SLOT + timedelta(hours=1)


def history() -> list[Series]:
    """Counters per minute: accepted + rejected webhooks, and the 401 responses (= rejected)."""
    samples: dict[str, list[tuple[datetime, float]]] = {"accepted": [], "rejected": [], "401": []}
    for name, h in SCENARIOS.items():
        start = flip_at(name) - timedelta(hours=1)
        for minute in range(121):
            before, after = min(minute, 60), max(minute - 60, 0)
            total = math.floor(h.requests[0] * before) + math.floor(h.requests[1] * after)
            rates = h.unauthorized or (0, 0)
            rejected = math.floor(rates[0] * before) + math.floor(rates[1] * after)
            at = start + timedelta(minutes=minute)
            samples["accepted"].append((at, total - rejected))
            samples["rejected"].append((at, rejected))
            if h.unauthorized is not None:
                broken = h.broken_after_flip and minute > 60
                samples["401"].append((at, math.nan if broken else rejected))
    return [
        Series("ledger_webhook", "counter", {**TENANT, "outcome": o}, samples[o])
        for o in ("accepted", "rejected")
    ] + [Series("ledger_http_responses", "counter", {**TENANT, **UNAUTHORIZED}, samples["401"])]


class LiveService:
    """A scrape target whose counters follow the wall clock: 50 webhooks/s, no 401s."""

    RATE = 50

    def __init__(self) -> None:
        self.started = time.time()
        self.first_scrape: float | None = None
        self.http = LoopbackHTTP(self.metrics)

    def metrics(self) -> Reply:
        now = time.time()
        if self.first_scrape is None:
            self.first_scrape = now
        total = math.floor(self.RATE * (now - self.started))
        return Reply(
            f'ledger_webhook_total{{tenant="t-live",outcome="accepted"}} {total}\n'
            f'ledger_webhook_total{{tenant="t-live",outcome="rejected"}} 0\n'
            'ledger_http_responses_total{tenant="t-live",route="/webhooks/deposit",'
            'status="401",code="WEBHOOK_SIGNATURE_INVALID"} 0\n'
        )


@pytest.fixture(scope="module")
def live() -> Iterator[LiveService]:
    service = LiveService()
    yield service
    service.http.close()


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, live: LiveService
) -> Iterator[PrometheusServer]:
    require_prometheus()
    workdir = tmp_path_factory.mktemp("prometheus")
    with start_prometheus(workdir, history=history(), scrape=[live.http.address]) as server:
        yield server


@pytest.fixture(scope="module")
def stopped_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where a Prometheus was listening until it was stopped."""
    require_prometheus()
    with start_prometheus(tmp_path_factory.mktemp("stopped")) as server:
        pass
    return server.url


@pytest.fixture(scope="module")
def stub() -> Iterator[LoopbackHTTP]:
    """Something on the metrics URL that is not a healthy Prometheus; tests set its reply."""
    with LoopbackHTTP(lambda: Reply("")) as server:
        yield server


def watch(client: PrometheusClient, scenario: str, **changes: object) -> CheckResult:
    thresholds = replace(WebhookWatchThresholds(), **changes)  # type: ignore[arg-type]
    return webhook_401_watch(client, flip_at(scenario), thresholds)


def failure_text(result: CheckResult) -> str:
    assert result.failure is not None, f"expected a failure, got a pass: {result.summary}"
    f = result.failure
    return "\n".join([f.title, f.expected, f.seen, f.remedy])


# --- the harness -------------------------------------------------------------------------------


def test_missing_prometheus_fails_on_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="prometheus and promtool not on PATH"):
        require_prometheus()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus"):
        require_prometheus()
    assert "apt-get install prometheus" in INSTALL_HINT


def test_backfilled_history_is_queryable_at_pinned_times(client: PrometheusClient) -> None:
    at = flip_at("steady")
    vector = client.query("sum(increase(ledger_webhook_total[30m]))", at)
    assert vector.single() == 3000
    body = vector.evidence().body
    assert "query: sum(increase(ledger_webhook_total[30m]))" in body
    assert f"time: {at.isoformat().replace('+00:00', 'Z')}" in body
    assert "HTTP 200, 1 series" in body
    assert "{} = 3000" in body


# --- the client fails closed ----------------------------------------------------------------


def test_keyed_query_returns_one_value_per_key(client: PrometheusClient) -> None:
    vector = client.query(
        "sum by (outcome) (ledger_webhook_total)",
        flip_at("surge") + timedelta(minutes=30),
        key=("outcome",),
    )
    assert vector.values == {("accepted",): 8670.0, ("rejected",): 330.0}
    assert '{outcome="rejected"} = 330' in vector.evidence().body


def test_duplicate_series_for_a_key_are_refused(client: PrometheusClient) -> None:
    with pytest.raises(PrometheusError) as caught:
        client.query("ledger_webhook_total", flip_at("steady"), key=("tenant",))
    assert caught.value.reason == "duplicate series"
    assert 'more than one series for {tenant="t-1"}' in caught.value.detail
    assert "sum by (tenant)" in caught.value.remedy


def test_bad_promql_is_an_error_answer_with_its_type(client: PrometheusClient) -> None:
    with pytest.raises(PrometheusError) as caught:
        client.query("sum(rate(ledger_webhook_total[5m])", flip_at("steady"))
    error = caught.value
    assert error.reason == "error answer"
    assert "HTTP 400" in error.detail and "errorType='bad_data'" in error.detail
    assert "HTTP 400" in error.evidence.body


def test_execution_error_is_an_error_answer(client: PrometheusClient) -> None:
    # Two outcomes on each side of a one-to-one match: Prometheus answers 422 "execution".
    with pytest.raises(PrometheusError, match=r"HTTP 422.*errorType='execution'"):
        client.query("ledger_webhook_total + on(tenant) ledger_webhook_total", flip_at("steady"))


def test_a_scalar_is_not_a_vector(client: PrometheusClient) -> None:
    with pytest.raises(PrometheusError, match="resultType='scalar'"):
        client.query("1", flip_at("steady"))


def test_no_series_is_not_zero(client: PrometheusClient) -> None:
    at = flip_at("no_401_series")
    with pytest.raises(PrometheusError) as caught:
        client.query('sum(ledger_http_responses_total{status="401"})', at)
    assert caught.value.reason == "no series"
    assert (
        client.query('sum(ledger_http_responses_total{status="401"})', at, allow_empty=True).values
        == {}
    )
    zero = client.query('sum(ledger_http_responses_total{status="401"})', flip_at("zero_busy"))
    assert zero.single() == 0


def test_nan_is_refused(client: PrometheusClient) -> None:
    at = flip_at("nan") + timedelta(minutes=30)
    with pytest.raises(PrometheusError) as caught:
        client.query('ledger_http_responses_total{status="401"}', at, key=("tenant",))
    assert caught.value.reason == "not a finite value"
    assert "{tenant=\"t-1\"} = 'NaN'" in caught.value.detail


def test_infinity_is_refused(client: PrometheusClient) -> None:
    with pytest.raises(PrometheusError, match=r"\+Inf"):
        client.query("vector(1) / vector(0)", flip_at("steady"))


def test_stopped_prometheus_is_connection_refused(stopped_url: str) -> None:
    with (
        PrometheusClient(stopped_url, timeout=2) as client,
        pytest.raises(PrometheusError) as caught,
    ):
        client.query("up", flip_at("steady"))
    assert caught.value.reason == "unreachable"
    assert "Connection refused" in caught.value.detail
    assert "/-/ready" in caught.value.remedy


@pytest.mark.parametrize("status", [200, 502])
def test_html_from_a_proxy_is_refused(stub: LoopbackHTTP, status: int) -> None:
    stub.reply = lambda: Reply("<html><body>Sign in</body></html>", status, "text/html")
    with PrometheusClient(stub.url) as client, pytest.raises(PrometheusError) as caught:
        client.query("up", flip_at("steady"))
    assert caught.value.reason == "not JSON"
    assert f"HTTP {status} with a text/html body" in caught.value.detail
    assert "Sign in" in caught.value.detail


def test_warnings_are_a_degraded_answer(stub: LoopbackHTTP) -> None:
    answer = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]},
        "warnings": ["remote read: store-2 unreachable"],
    }
    stub.reply = lambda: Reply(json.dumps(answer), content_type="application/json")
    with PrometheusClient(stub.url) as client, pytest.raises(PrometheusError) as caught:
        client.query("up", flip_at("steady"))
    assert caught.value.reason == "degraded answer"
    assert "store-2 unreachable" in caught.value.detail


def test_503_error_answer_says_unavailable(stub: LoopbackHTTP) -> None:
    answer = {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}
    stub.reply = lambda: Reply(json.dumps(answer), 503, "application/json")
    with PrometheusClient(stub.url) as client, pytest.raises(PrometheusError) as caught:
        client.query("up", flip_at("steady"))
    assert "HTTP 503" in caught.value.detail and "TSDB not ready" in caught.value.detail
    assert "not ready" in caught.value.remedy


def test_a_hung_server_times_out(stub: LoopbackHTTP) -> None:
    stub.reply = lambda: Reply("{}", delay=1.0)
    with (
        PrometheusClient(stub.url, timeout=0.2) as client,
        pytest.raises(PrometheusError) as caught,
    ):
        client.query("up", flip_at("steady"))
    assert caught.value.reason == "timeout"


def test_credentials_never_appear_in_errors(stub: LoopbackHTTP) -> None:
    token = "s3cr3t-token-value"
    stub.reply = lambda: Reply(f"<html>bad token {token}</html>", 401, "text/html")
    url = stub.url.replace("http://", "http://ops:hunter22@")
    headers = {"Authorization": f"Bearer {token}"}
    with PrometheusClient(url, headers=headers) as client, pytest.raises(PrometheusError) as caught:
        client.query("up", flip_at("steady"))
    everything = f"{caught.value} {caught.value.evidence.body} {caught.value.remedy} {client!r}"
    assert token not in everything and "hunter22" not in everything
    assert "bad token ***" in caught.value.detail


def test_naive_time_is_a_programming_error(client: PrometheusClient) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        client.query("up", datetime(2025, 1, 1))


# --- the 2.3 webhook 401 watch --------------------------------------------------------------


def test_steady_401s_pass_with_figures(client: PrometheusClient) -> None:
    result = watch(client, "steady")
    assert result.ok, failure_text(result)
    assert result.summary.startswith("webhook 401 share 0.60% after the flip vs 0.50% before")
    labels = [e.label for e in result.evidence]
    assert labels.count(f"PromQL @ {flip_at('steady').isoformat().replace('+00:00', 'Z')}") == 2
    figures = result.evidence[-1].body
    assert "15 of 3000 webhook requests answered 401" in figures
    assert "18 of 3000" in figures and "ratio x1.20" in figures


def test_a_401_surge_fails_with_figures(client: PrometheusClient) -> None:
    text = failure_text(watch(client, "surge"))
    assert "surged after the flip" in text
    assert "300 of 3000 (10.000%)" in text
    assert "401 share after the flip 10.00% > ceiling 1.00%" in text
    assert "x20.00 > x2" in text
    assert "webhook_signature_enforced off again" in text


def test_a_surge_over_a_zero_baseline_fails_under_the_ceiling(client: PrometheusClient) -> None:
    text = failure_text(watch(client, "zero_then_surge"))
    # 9 of 3000 is under the 1% ceiling: the exact test alone catches it (p = 0.5**9).
    assert "401 share rose x∞ (none before) > x2 (p=0.002 < 0.01)" in text
    assert "0 of 3000 webhook requests answered 401" in text


def test_two_stray_401s_over_a_zero_baseline_pass(client: PrometheusClient) -> None:
    result = watch(client, "zero_then_blip")
    assert result.ok, failure_text(result)
    assert "p=0.25" in result.summary


def test_zero_before_and_after_passes_with_enough_traffic(client: PrometheusClient) -> None:
    result = watch(client, "zero_busy")
    assert result.ok, failure_text(result)
    assert "0.00% after the flip vs 0.00% before" in result.summary


def test_zero_before_and_after_fails_without_enough_traffic(client: PrometheusClient) -> None:
    result = watch(client, "zero_quiet")
    text = failure_text(result)
    assert "Too little webhook traffic" in text
    assert "before: 60 webhook requests; after: 60 webhook requests" in text
    assert "at least 100 webhook requests in each window" in text
    assert watch(client, "zero_quiet", min_requests=50).ok


def test_missing_401_series_is_no_series_unless_declared_zero(client: PrometheusClient) -> None:
    text = failure_text(watch(client, "no_401_series"))
    assert "(no series)" in text and "not the same as 0" in text
    assert watch(client, "no_401_series", unauthorized_empty_means_zero=True).ok


def test_nan_fails(client: PrometheusClient) -> None:
    text = failure_text(watch(client, "nan"))
    assert "(not a finite value)" in text and "NaN" in text


def test_an_unaggregated_query_is_refused_as_duplicate_series(client: PrometheusClient) -> None:
    result = watch(client, "steady", requests_query="increase(ledger_webhook_total[$window])")
    assert "(duplicate series)" in failure_text(result)


def test_bad_promql_in_the_config_fails_with_the_error_type(client: PrometheusClient) -> None:
    result = watch(client, "steady", unauthorized_query="sum(increase(x[$window])")
    text = failure_text(result)
    assert "(error answer)" in text and "HTTP 400" in text and "bad_data" in text
    assert "Fix the PromQL in the config" in text
    assert "HTTP 400" in result.evidence[-1].body


def test_prometheus_down_fails_and_says_connection_refused(stopped_url: str) -> None:
    with PrometheusClient(stopped_url, timeout=2) as client:
        text = failure_text(webhook_401_watch(client, flip_at("steady")))
    assert "(unreachable)" in text and "Connection refused" in text


def test_a_negative_count_fails(client: PrometheusClient) -> None:
    result = watch(client, "steady", requests_query="-sum(increase(ledger_webhook_total[$window]))")
    assert "came out negative" in failure_text(result)


def test_the_watch_waits_for_its_window_to_end(client: PrometheusClient) -> None:
    flip = datetime.now(UTC) - timedelta(minutes=10)
    text = failure_text(webhook_401_watch(client, flip))
    assert "not over yet" in text and "Rerun step 2.3 after" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"before_window": timedelta(seconds=0.5)}, "whole number of seconds"),
        ({"min_requests": 0}, "min_requests"),
        ({"max_ratio": 0.5}, "max_ratio"),
        ({"alpha": 1.0}, "alpha"),
        ({"max_after_share": 2.0}, "max_after_share"),
        ({"requests_query": "sum(ledger_webhook_total)"}, r"\$window"),
    ],
)
def test_thresholds_are_validated(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(WebhookWatchThresholds(), **change)  # type: ignore[arg-type]


def test_live_scraped_service_passes(
    client: PrometheusClient, prometheus: PrometheusServer, live: LiveService
) -> None:
    window = timedelta(seconds=3)
    deadline = time.time() + 15
    while live.first_scrape is None and time.time() < deadline:
        time.sleep(0.1)
    assert live.first_scrape is not None, "Prometheus never scraped the live target"
    flip = max(time.time(), live.first_scrape + window.total_seconds() + 0.5)
    flip_time = datetime.fromtimestamp(flip, UTC)
    time.sleep(max(0.0, flip + window.total_seconds() + 1.2 - time.time()))  # one more scrape
    thresholds = WebhookWatchThresholds(before_window=window, after_window=window, min_requests=50)
    result = webhook_401_watch(client, flip_time, thresholds)
    assert result.ok, failure_text(result)
    assert "0.00% after the flip vs 0.00% before" in result.summary
