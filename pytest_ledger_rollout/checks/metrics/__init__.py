"""Metric gates from Prometheus: a fail-closed client, exact count tests, the runbook's watches."""

from pytest_ledger_rollout.checks.metrics.counts import (
    RateComparison,
    WindowCounts,
    binomial_sf,
    compare_rates,
)
from pytest_ledger_rollout.checks.metrics.decision import (
    Decision,
    DecisionPolicy,
    Finding,
    MismatchSignal,
    Outcome,
    RateSignal,
    RollbackPlan,
    TenantVerdict,
    Verdict,
    decide,
    to_check_result,
)
from pytest_ledger_rollout.checks.metrics.prometheus import (
    InstantVector,
    PrometheusClient,
    PrometheusError,
)
from pytest_ledger_rollout.checks.metrics.webhook_watch import (
    WebhookWatchThresholds,
    webhook_401_watch,
)

__all__ = [
    "Decision",
    "DecisionPolicy",
    "Finding",
    "InstantVector",
    "MismatchSignal",
    "Outcome",
    "PrometheusClient",
    "PrometheusError",
    "RateComparison",
    "RateSignal",
    "RollbackPlan",
    "TenantVerdict",
    "Verdict",
    "WebhookWatchThresholds",
    "WindowCounts",
    "binomial_sf",
    "compare_rates",
    "decide",
    "to_check_result",
    "webhook_401_watch",
]
