"""Metric gates from Prometheus: a fail-closed client, exact count tests, the runbook's watches."""

from .counts import RateComparison, WindowCounts, binomial_sf, compare_rates
from .prometheus import InstantVector, PrometheusClient, PrometheusError
from .webhook_watch import WebhookWatchThresholds, webhook_401_watch

__all__ = [
    "InstantVector",
    "PrometheusClient",
    "PrometheusError",
    "RateComparison",
    "WebhookWatchThresholds",
    "WindowCounts",
    "binomial_sf",
    "compare_rates",
    "webhook_401_watch",
]
