"""Runbook 2.3: is there an increase in ``401 WEBHOOK_SIGNATURE_INVALID`` after the flip?

The watch compares the window right after ``webhook_signature_enforced`` was turned on with
an equally pinned window right before it, both from Prometheus at fixed evaluation times, so
a rerun reads the same figures. It fails when either

- the share of webhook requests answered 401 after the flip is above an absolute ceiling, or
- the share rose by more than ``max_ratio`` *and* the rise is significant in an exact count
  test (see ``counts``). The test stays meaningful when the baseline has zero 401s, which is
  the usual case here: before the flip the service only counts would-be rejections. A ratio
  alone is useless at a zero baseline (anything over 0 is infinite) and would call two stray
  bad signatures a surge; the ceiling still catches a surge that is too short to be
  significant but too large to accept.

It never passes on missing evidence: Prometheus down, an error or partial answer, no series,
NaN, or fewer than ``min_requests`` webhook requests in either window all fail and say why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from string import Template

from pytest_ledger_rollout.checks.metrics.counts import RateComparison, WindowCounts, compare_rates
from pytest_ledger_rollout.checks.metrics.prometheus import (
    PrometheusClient,
    PrometheusError,
    iso_utc,
)
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed

# Defaults for a service exporting ledger_http_responses_total{route,status,code,tenant} and
# ledger_webhook_total{tenant,outcome}; ``$window`` becomes the window as a PromQL duration.
# Both count requests over the window; increase() extrapolates, so counts are rounded.
UNAUTHORIZED_QUERY = (
    'sum(increase(ledger_http_responses_total{status="401",code="WEBHOOK_SIGNATURE_INVALID"}'
    "[$window]))"
)
REQUESTS_QUERY = "sum(increase(ledger_webhook_total[$window]))"

RUNBOOK_ROLLBACK = (
    "Turn webhook_signature_enforced off again (undo step 2.3), compare the payment "
    "providers' signing secret with the service's (a wrong or rotated secret is the usual "
    "cause; the tenant label of the 401s shows whose), fix it, flip the flag again and rerun "
    "the watch once its window has passed."
)


# The longest window: a year of Prometheus history, far inside datetime arithmetic's range.
MAX_WINDOW_S = 366 * 24 * 3600


def check_window(name: str, window: timedelta) -> None:
    seconds = window.total_seconds()
    if not 1 <= seconds <= MAX_WINDOW_S or seconds != int(seconds):
        raise ValueError(
            f"{name} must be a whole number of seconds in 1..{MAX_WINDOW_S}: {seconds:g}"
        )


def check_rate_test(prefix: str, min_requests: int, max_ratio: float, alpha: float) -> None:
    """Thresholds of a rate rise test. Each test is written so that NaN fails it (NaN compares
    false both ways); an infinite max_ratio would let no rise ever count, so it fails too."""
    if not 1 <= min_requests < math.inf:
        raise ValueError(f"{prefix}min_requests must be a whole number >= 1: {min_requests}")
    if not 1 <= max_ratio < math.inf:
        raise ValueError(f"{prefix}max_ratio must be a finite number >= 1: {max_ratio}")
    if not 0 < alpha < 1:
        raise ValueError(f"{prefix}alpha must be between 0 and 1: {alpha}")


def rose(ratio: float, p_value: float, max_ratio: float, alpha: float) -> bool:
    """A rise above ``max_ratio`` with ``p_value`` below ``alpha``. Written as "not clearly
    within bounds" so that a NaN anywhere counts as a rise: never a pass by accident."""
    return not (ratio <= max_ratio or p_value >= alpha)


@dataclass(frozen=True)
class WebhookWatchThresholds:
    before_window: timedelta = timedelta(minutes=30)  # ends at the flip
    after_window: timedelta = timedelta(minutes=30)  # starts at the flip
    min_requests: int = 100  # webhook requests needed in each window for the answer to count
    max_ratio: float = 2.0  # tolerated rise of the 401 share, after / before
    alpha: float = 0.01  # a rise beyond max_ratio counts only when p < alpha
    max_after_share: float = 0.01  # ceiling on the 401 share after the flip, whatever before was
    unauthorized_query: str = UNAUTHORIZED_QUERY  # 401 WEBHOOK_SIGNATURE_INVALID over $window
    requests_query: str = REQUESTS_QUERY  # all webhook requests over $window
    # Declare True only for a service that creates the 401 series on its first 401: then an
    # empty answer means zero. Default: empty is "no series", a failure.
    unauthorized_empty_means_zero: bool = False

    def __post_init__(self) -> None:
        for name in ("before_window", "after_window"):
            check_window(name, getattr(self, name))
        check_rate_test("", self.min_requests, self.max_ratio, self.alpha)
        if not 0 <= self.max_after_share <= 1:
            raise ValueError(f"max_after_share must be between 0 and 1: {self.max_after_share}")
        for name in ("unauthorized_query", "requests_query"):
            if "$window" not in getattr(self, name):
                raise ValueError(f"{name} must contain $window (the window as a duration)")


DEFAULT_THRESHOLDS = WebhookWatchThresholds()


def webhook_401_watch(
    client: PrometheusClient,
    flip_at: datetime,
    thresholds: WebhookWatchThresholds = DEFAULT_THRESHOLDS,
    *,
    now: datetime | None = None,
) -> CheckResult:
    """Runbook 2.3 for a flip of ``webhook_signature_enforced`` at ``flip_at`` (tz-aware)."""
    if flip_at.tzinfo is None:
        raise ValueError("the flip time must be timezone-aware")
    t = thresholds
    after_end = flip_at + t.after_window
    now = now or datetime.now(UTC)
    if after_end > now:
        return failed(
            Failure(
                "The 401 watch window after the flip is not over yet",
                expected=f"{window_text(t.after_window)} of traffic after the flip "
                f"at {iso_utc(flip_at)}",
                seen=f"it is {iso_utc(now)}; the window ends at {iso_utc(after_end)}",
                remedy=f"Rerun step 2.3 after {iso_utc(after_end)}.",
            )
        )
    evidence: list[Evidence] = []
    try:
        before = _counts(client, t, flip_at, t.before_window, evidence)
        after = _counts(client, t, after_end, t.after_window, evidence)
    except PrometheusError as error:
        expected = "a clean, finite answer for each webhook count around the flip"
        return failed(error.failure(expected), *evidence, error.evidence)
    except _BadCount as bad:
        return failed(bad.failure, *evidence)

    thin = [
        f"{name}: {counts.requests} webhook requests"
        for name, counts in (("before", before), ("after", after))
        if counts.requests < t.min_requests
    ]
    if thin:
        return failed(
            Failure(
                "Too little webhook traffic to judge the 401 rate",
                expected=f"at least {t.min_requests} webhook requests in each window",
                seen="; ".join(thin),
                remedy="Drive webhook traffic (the provider's test deliveries, or the smoke) "
                "through the service around the flip, or widen the windows in the config, "
                "then rerun. Too few requests can neither show nor rule out a surge.",
            ),
            *evidence,
        )

    comparison = compare_rates(before, after)
    figures = _figures(comparison, t, flip_at)
    evidence.append(Evidence("webhook 401 watch", figures))
    breaches = _breaches(comparison, t)
    if breaches:
        return failed(
            Failure(
                f"Webhook 401 WEBHOOK_SIGNATURE_INVALID surged after the flip: {breaches[0]}",
                expected=f"401 share after ≤ {t.max_after_share:.2%}, and not above "
                f"x{t.max_ratio:g} of before with p < {t.alpha:g}",
                seen="\n".join([*breaches, figures]),
                remedy=RUNBOOK_ROLLBACK,
            ),
            *evidence,
        )
    return passed(
        f"webhook 401 share {after.share:.2%} after the flip vs {before.share:.2%} before "
        f"({_ratio(comparison.ratio)}, p={comparison.p_value:.2g}; "
        f"{before.requests}/{after.requests} requests)",
        *evidence,
    )


class _BadCount(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.title)
        self.failure = failure


def _counts(
    client: PrometheusClient,
    t: WebhookWatchThresholds,
    at: datetime,
    window: timedelta,
    evidence: list[Evidence],
) -> WindowCounts:
    """The window ending at ``at``: (401s, webhook requests), each from one query."""
    duration = window_text(window)

    def count(template: str, allow_empty: bool) -> int:
        promql = Template(template).substitute(window=duration)
        vector = client.query(promql, at, allow_empty=allow_empty)
        evidence.append(vector.evidence())
        value = vector.single()
        value = 0.0 if value is None else value  # empty only reaches here when allowed
        if not value >= 0:  # NaN too
            raise _BadCount(
                Failure(
                    "A webhook count came out negative",
                    expected="a count of requests (≥ 0)",
                    seen=f"{promql} at {iso_utc(at)} = {value:g}",
                    remedy="Count with increase() over a counter; fix the query in the config.",
                )
            )
        return round(value)

    requests = count(t.requests_query, allow_empty=False)
    errors = count(t.unauthorized_query, allow_empty=t.unauthorized_empty_means_zero)
    return WindowCounts(errors=errors, requests=requests)


def _breaches(c: RateComparison, t: WebhookWatchThresholds) -> list[str]:
    breaches = []
    if not c.after.share <= t.max_after_share:  # NaN breaches
        breaches.append(
            f"401 share after the flip {c.after.share:.2%} > ceiling {t.max_after_share:.2%}"
        )
    if rose(c.ratio, c.p_value, t.max_ratio, t.alpha):
        breaches.append(
            f"401 share rose {_ratio(c.ratio)} > x{t.max_ratio:g} (p={c.p_value:.2g} < {t.alpha:g})"
        )
    return breaches


def _figures(c: RateComparison, t: WebhookWatchThresholds, flip_at: datetime) -> str:
    return "\n".join(
        [
            f"flip at {iso_utc(flip_at)}",
            f"before ({window_text(t.before_window)} up to the flip): {c.before.errors} of "
            f"{c.before.requests} webhook requests answered 401 ({c.before.share:.3%})",
            f"after ({window_text(t.after_window)} from the flip): {c.after.errors} of "
            f"{c.after.requests} ({c.after.share:.3%}); ceiling {t.max_after_share:.2%}",
            f"ratio {_ratio(c.ratio)} (limit x{t.max_ratio:g}), one-sided exact p="
            f"{c.p_value:.3g} (a rise counts below {t.alpha:g})",
            f"minimum traffic per window {t.min_requests}",
        ]
    )


def _ratio(ratio: float) -> str:
    return "x∞ (none before)" if ratio == float("inf") else f"x{ratio:.2f}"


def window_text(window: timedelta) -> str:
    return f"{int(window.total_seconds())}s"


def webhook_401_watch_from(
    prometheus_url: str | None,
    flip_at: datetime | None,
    thresholds: WebhookWatchThresholds = DEFAULT_THRESHOLDS,
) -> CheckResult:
    """The watch as a phase runs it: what is missing to run it is a failure, never a pass."""
    if prometheus_url is None:
        return failed(
            Failure(
                "No Prometheus to watch the webhook 401s with",
                expected="the target's prometheus_url",
                seen="no prometheus_url for this target",
                remedy="Set [targets.NAME] prometheus_url in the rollout config.",
            )
        )
    if flip_at is None:
        return failed(
            Failure(
                "The signature flag's flip time is unknown: the windows cannot be placed",
                expected="a change time for webhook_signature_enforced from the flag source",
                seen="no change time (flag missing, or a source without change times)",
                remedy="Turn the flag on through a source that keeps change times, then rerun.",
            )
        )
    with PrometheusClient(prometheus_url) as client:
        return webhook_401_watch(client, flip_at, thresholds)
