"""Prometheus metrics of the service, with tenant and error-code labels.

Every tenant's series that later rollout phases watch exist from the start at 0 (the tenants
in the database at start, at each scrape, and any tenant first seen in a request), so that
`increase()` over them is 0 rather than empty."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, generate_latest

WEBHOOK_ROUTE = "/webhooks/{provider}/deposits"
WITHDRAW_ROUTE = "/wallets/{wallet_id}/withdrawals"
WEBHOOK_OUTCOMES = ("accepted", "duplicate", "rejected_signature", "would_reject", "invalid")
# (route, status, code) series each tenant has from the start.
WATCHED_RESPONSES = (
    (WEBHOOK_ROUTE, "401", "WEBHOOK_SIGNATURE_INVALID"),
    (WITHDRAW_ROUTE, "400", "INSUFFICIENT_FUNDS"),
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.responses = Counter(
            "ledger_http_responses",
            "HTTP responses by route template, status, error code (OK on success) and tenant",
            ["route", "status", "code", "tenant"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "ledger_webhook",
            "Deposit webhooks by tenant and outcome",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.mismatches = Counter(
            "ledger_balance_mismatch",
            "Balance changes after which the legacy balance differed from the ledger sum",
            ["tenant"],
            registry=self.registry,
        )
        self._primed: set[str] = set()

    def prime(self, tenants: Iterable[str]) -> None:
        for tenant in tenants:
            if tenant in self._primed:
                continue
            self.mismatches.labels(tenant)
            for outcome in WEBHOOK_OUTCOMES:
                self.webhooks.labels(tenant, outcome)
            for route, status, code in WATCHED_RESPONSES:
                self.responses.labels(route, status, code, tenant)
            self._primed.add(tenant)

    def response(self, route: str, status: int, code: str, tenant: str) -> None:
        self.responses.labels(route, str(status), code, tenant).inc()

    def webhook(self, tenant: str, outcome: str) -> None:
        self.webhooks.labels(tenant, outcome).inc()

    def mismatch(self, tenant: str) -> None:
        self.mismatches.labels(tenant).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
