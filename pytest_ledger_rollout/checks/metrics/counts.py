"""An exact test for "did the error rate rise?" that stays valid when the baseline is zero.

Two windows, each with ``errors`` out of ``requests``. If the per-request error rate were the
same in both, then given the total number of errors ``k``, the errors falling in the second
window follow Binomial(k, n2 / (n1 + n2)) exactly (the conditional Poisson test; no normal
approximation, no pseudo-counts). Its one-sided p-value is small only when the second window
holds more errors than its share of the traffic explains:

- zero before, 7 after, equal traffic: p = 0.5**7 = 0.008 (a real surge is caught);
- zero before, 2 after: p = 0.25 (two stray errors are not called a surge);
- zero in both: k = 0, p = 1 (nothing rose).

A ratio test alone cannot do this (x/0 is infinite for any x), and a normal approximation
is wrong for the small counts a healthy service produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowCounts:
    errors: int
    requests: int

    @property
    def share(self) -> float:
        return self.errors / self.requests if self.requests else math.nan


@dataclass(frozen=True)
class RateComparison:
    before: WindowCounts
    after: WindowCounts
    ratio: float  # after share / before share; inf when only "after" has errors, 1 when neither
    p_value: float  # one-sided: P(at least this many errors after | same rate in both)


def compare_rates(before: WindowCounts, after: WindowCounts) -> RateComparison:
    if before.requests <= 0 or after.requests <= 0:
        raise ValueError("both windows need requests to compare rates")
    # No 401s before: any after is an infinite rise (the p-value judges it), none is no change.
    no_base = math.inf if after.errors else 1.0
    ratio = after.share / before.share if before.errors else no_base
    after_part = after.requests / (before.requests + after.requests)
    p_value = binomial_sf(after.errors, before.errors + after.errors, after_part)
    return RateComparison(before, after, ratio, p_value)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact, in log space (no overflow at large n).

    Sums the smaller tail from its end nearest the mode outward and stops once the terms no
    longer change the sum, so the cost is about the tail's width, not n.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return 1.0 if p >= 1.0 else 0.0
    mode = math.floor((n + 1) * p)
    if k > mode:  # upper tail, terms fall as i grows
        return min(1.0, _tail_sum(range(k, n + 1), n, p))
    return max(0.0, 1.0 - _tail_sum(range(k - 1, -1, -1), n, p))  # 1 - P(X <= k-1)


def _tail_sum(indices: range, n: int, p: float) -> float:
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    terms: list[float] = []
    for i in indices:
        term = math.exp(
            log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        )
        terms.append(term)
        if term <= 1e-17 * terms[0]:  # monotone tail: the rest cannot matter
            break
    return math.fsum(terms)
