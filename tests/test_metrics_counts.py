"""The exact count test behind the metric gates, against direct sums and known figures."""

from __future__ import annotations

import math

import pytest

from pytest_ledger_rollout.checks.metrics import WindowCounts, binomial_sf, compare_rates


def direct_sf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [
        (0, 5, 0.3),
        (1, 1, 0.5),
        (3, 10, 0.5),
        (9, 9, 0.5),
        (2, 40, 0.1),
        (15, 40, 0.1),
        (30, 60, 0.6),
    ],
)
def test_binomial_tail_matches_the_direct_sum(k: int, n: int, p: float) -> None:
    assert binomial_sf(k, n, p) == pytest.approx(direct_sf(k, n, p), rel=1e-12, abs=1e-300)


def test_binomial_tail_is_exact_at_large_counts() -> None:
    def exact_half(k: int, n: int) -> float:  # p = 1/2: an exact ratio of integers
        term, total = math.comb(n, k), 0
        for i in range(k, n + 1):
            total += term
            term = term * (n - i) // (i + 1)
        return total / (1 << n)

    for k in (4800, 5200, 5500):
        assert binomial_sf(k, 10_000, 0.5) == pytest.approx(exact_half(k, 10_000), rel=1e-9)
    assert binomial_sf(10_000, 10_000, 0.5) == pytest.approx(0.5**10_000, abs=1e-300)
    assert binomial_sf(11, 10, 0.5) == 0.0


def test_zero_baseline_surge_is_significant_and_a_blip_is_not() -> None:
    surge = compare_rates(WindowCounts(0, 3000), WindowCounts(7, 3000))
    assert surge.ratio == math.inf and surge.p_value == pytest.approx(0.5**7)
    blip = compare_rates(WindowCounts(0, 3000), WindowCounts(2, 3000))
    assert blip.p_value == pytest.approx(0.25)


def test_nothing_in_either_window_is_no_rise() -> None:
    quiet = compare_rates(WindowCounts(0, 500), WindowCounts(0, 700))
    assert quiet.ratio == 1.0 and quiet.p_value == 1.0


def test_more_traffic_after_explains_more_errors() -> None:
    # Twice the traffic and twice the errors: same rate, no evidence of a rise.
    same = compare_rates(WindowCounts(10, 1000), WindowCounts(20, 2000))
    assert same.ratio == pytest.approx(1.0) and same.p_value > 0.4


def test_windows_without_requests_cannot_be_compared() -> None:
    with pytest.raises(ValueError, match="need requests"):
        compare_rates(WindowCounts(0, 0), WindowCounts(0, 10))
