"""No threshold or value can make a metric comparison fail open: NaN and infinities either
never get in, or count as a breach."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from pytest_ledger_rollout.checks.metrics.counts import RateComparison, WindowCounts, compare_rates
from pytest_ledger_rollout.checks.metrics.decision import DEFAULT_POLICY, MismatchSignal
from pytest_ledger_rollout.checks.metrics.webhook_watch import DEFAULT_THRESHOLDS, rose

NAN, INF = math.nan, math.inf
SIGNAL = DEFAULT_POLICY.insufficient_funds


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_ratio", NAN), ("max_ratio", INF), ("alpha", NAN), ("min_requests", NAN)],
)
def test_rate_signal_refuses_non_finite_thresholds(field: str, value: float) -> None:
    change: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        replace(SIGNAL, **change)
    with pytest.raises(ValueError, match=field):
        replace(DEFAULT_THRESHOLDS, **change)


@pytest.mark.parametrize("value", [NAN, -1])
def test_other_thresholds_refuse_nan(value: float) -> None:
    with pytest.raises(ValueError, match="max_after_share"):
        replace(DEFAULT_THRESHOLDS, max_after_share=value)
    with pytest.raises(ValueError, match="max_count"):
        MismatchSignal(max_count=value)  # type: ignore[arg-type]


def test_a_thirtyfold_rise_breaches() -> None:
    before, after = WindowCounts(10, 1000), WindowCounts(300, 1000)
    assert SIGNAL.breached(compare_rates(before, after))


@pytest.mark.parametrize(
    ("ratio", "p_value", "max_ratio", "alpha"),
    [(NAN, 0.0, 2.0, 0.01), (30.0, NAN, 2.0, 0.01), (30.0, 0.0, NAN, 0.01), (30, 0, 2, NAN)],
)
def test_nan_anywhere_counts_as_a_rise(
    ratio: float, p_value: float, max_ratio: float, alpha: float
) -> None:
    assert rose(ratio, p_value, max_ratio, alpha)


def test_a_nan_comparison_breaches_the_signal() -> None:
    counts = WindowCounts(1, 1000)
    assert SIGNAL.breached(RateComparison(counts, counts, NAN, NAN))
