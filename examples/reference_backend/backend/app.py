"""The HTTP API of the reference service (FastAPI). Routes are thin: each runs one transaction
through `Service`, which reads the flags inside it; metrics and mismatch logs follow commit."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Annotated, Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, ValidationError, model_validator
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from . import ledger
from .db import engine_for
from .flags import KNOWN_FLAGS, FlagRow, flags_for, list_flags, set_flag
from .ledger import LedgerError, Mismatch, Wallet, Withdrawal
from .metrics import WEBHOOK_ROUTE, WITHDRAW_ROUTE, Metrics
from .settings import Settings
from .signatures import HEADER, signature_valid

log = logging.getLogger("backend")

UNKNOWN_TENANT = "unknown"  # label for requests naming no tenant that exists
UNCOUNTED_ROUTES = {"/metrics", "/healthz"}
Money = Annotated[Decimal, Field(gt=0, max_digits=18, decimal_places=2)]
Json = dict[str, Any]


class DepositEvent(BaseModel):
    event_id: str = Field(min_length=1, max_length=200)
    tenant: str
    wallet_id: int | None = None
    owner_ref: str | None = None
    currency: str = Field(default="TRY", min_length=3, max_length=3)
    amount: Money

    @model_validator(mode="after")
    def one_wallet_reference(self) -> DepositEvent:
        if (self.wallet_id is None) == (self.owner_ref is None):
            raise ValueError("name the wallet by exactly one of wallet_id and owner_ref")
        return self


class WithdrawalRequest(BaseModel):
    amount: Money


class FlagChange(BaseModel):
    enabled: bool
    tenant: str | None = None
    changed_by: str | None = None


def _money(amount: Decimal) -> str:
    return str(amount.quantize(Decimal("0.01")))


def _wallet_json(wallet: Wallet) -> Json:
    return {
        "id": wallet.id,
        "tenant": wallet.tenant,
        "owner_ref": wallet.owner_ref,
        "currency": wallet.currency,
        "legacy_balance": _money(wallet.legacy_balance),
        "ledger_balance": _money(wallet.ledger_balance),
    }


def _withdrawal_json(withdrawal: Withdrawal) -> Json:
    return {
        "id": withdrawal.id,
        "wallet_id": withdrawal.wallet_id,
        "tenant": withdrawal.tenant,
        "amount": _money(withdrawal.amount),
        "status": withdrawal.status,
    }


def _flag_json(row: FlagRow) -> Json:
    return {
        "key": row.key,
        "tenant": row.tenant,
        "enabled": row.enabled,
        "changed_at": row.changed_at.isoformat(),
        "changed_by": row.changed_by,
    }


def _payload(body: bytes) -> Json:
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


class Service:
    """The operations behind the routes; each is one transaction."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings, self.engine, self.metrics = settings, engine, metrics

    def prime_metrics(self) -> None:
        with self.engine.connect() as connection:
            self.metrics.prime(connection.execute(text("SELECT id FROM tenants")).scalars())

    def _label(self, request: Request, tenant: str) -> None:
        """Label the request's metrics with a tenant that exists (bounded cardinality)."""
        self.metrics.prime([tenant])
        request.state.tenant = tenant

    def _report(self, mismatch: Mismatch | None) -> None:
        if mismatch is None:
            return
        self.metrics.mismatch(mismatch.tenant)
        log.warning(
            "ledger balance mismatch: tenant=%s wallet=%s legacy=%s ledger=%s",
            mismatch.tenant,
            mismatch.wallet_id,
            mismatch.legacy,
            mismatch.ledger,
        )

    def _existing_tenant(self, connection: Connection, tenant: object) -> str | None:
        if not isinstance(tenant, str):
            return None
        found = connection.execute(
            text("SELECT id FROM tenants WHERE id = :id"), {"id": tenant}
        ).scalar_one_or_none()
        return None if found is None else str(found)

    def deposit(self, request: Request, provider: str, body: bytes, signed: bool) -> Json:
        try:
            result, event = self._deposit(request, provider, _payload(body), signed)
        except LedgerError as error:
            outcome = "rejected_signature" if error.status == 401 else "invalid"
            self.metrics.webhook(getattr(request.state, "tenant", UNKNOWN_TENANT), outcome)
            raise
        outcome = "duplicate" if result.duplicate else "accepted"
        self.metrics.webhook(event.tenant, outcome if signed else "would_reject")
        self._report(result.mismatch)
        return {
            "duplicate": result.duplicate,
            "provider": provider,
            "event_id": event.event_id,
            "tenant": event.tenant,
            "wallet_id": result.wallet_id,
        }

    def _deposit(
        self, request: Request, provider: str, payload: Json, signed: bool
    ) -> tuple[ledger.Deposit, DepositEvent]:
        with self.engine.begin() as connection:
            tenant = self._existing_tenant(connection, payload.get("tenant"))
            if tenant is not None:
                self._label(request, tenant)
            # An unknown tenant has no override: the global flag decides its signature check.
            flags = flags_for(connection, tenant)
            if not signed and flags.signature_enforced:
                raise LedgerError(401, "WEBHOOK_SIGNATURE_INVALID", "bad or missing signature")
            try:
                event = DepositEvent.model_validate(payload)
            except ValidationError as error:
                raise LedgerError(422, "INVALID_PAYLOAD", _first_error(error.errors())) from None
            if tenant is None:
                raise LedgerError(404, "TENANT_NOT_FOUND", f"no tenant {event.tenant}")
            wallet_id = ledger.find_wallet(
                connection,
                tenant,
                wallet_id=event.wallet_id,
                owner_ref=event.owner_ref,
                currency=event.currency,
            )
            wallet = ledger.lock_wallet(connection, wallet_id)
            result = ledger.deposit(
                connection,
                wallet,
                flags,
                self.settings.faults,
                provider=provider,
                event_id=event.event_id,
                amount=event.amount,
            )
        return result, event

    def read_wallet(self, request: Request, wallet_id: int) -> Json:
        with self.engine.connect() as connection:
            wallet = ledger.read_wallet(connection, wallet_id)
        self._label(request, wallet.tenant)
        return _wallet_json(wallet)

    def withdraw(self, request: Request, wallet_id: int, amount: Decimal) -> Json:
        with self.engine.begin() as connection:
            wallet = ledger.lock_wallet(connection, wallet_id)
            self._label(request, wallet.tenant)
            flags = flags_for(connection, wallet.tenant)
            change = ledger.withdraw(connection, wallet, flags, self.settings.faults, amount)
        self._report(change.mismatch)
        return _withdrawal_json(change.withdrawal)

    def move(self, request: Request, withdrawal_id: int, status: str) -> Json:
        with self.engine.begin() as connection:
            withdrawal = ledger.lock_withdrawal(connection, withdrawal_id)
            self._label(request, withdrawal.tenant)
            moved = ledger.move(connection, withdrawal, status)
        return _withdrawal_json(moved)

    def reject(self, request: Request, withdrawal_id: int) -> Json:
        with self.engine.begin() as connection:
            withdrawal = ledger.lock_withdrawal(connection, withdrawal_id)
            self._label(request, withdrawal.tenant)
            wallet = ledger.lock_wallet(connection, withdrawal.wallet_id)
            flags = flags_for(connection, wallet.tenant)
            change = ledger.reject(connection, withdrawal, wallet, flags, self.settings.faults)
        self._report(change.mismatch)
        return _withdrawal_json(change.withdrawal)

    def set_flag(self, request: Request, key: str, change: FlagChange) -> Json:
        if key not in KNOWN_FLAGS:
            raise LedgerError(400, "UNKNOWN_FLAG", f"{key} is not one of {', '.join(KNOWN_FLAGS)}")
        with self.engine.begin() as connection:
            if change.tenant is not None:
                if self._existing_tenant(connection, change.tenant) is None:
                    raise LedgerError(404, "TENANT_NOT_FOUND", f"no tenant {change.tenant}")
                self._label(request, change.tenant)
            row = set_flag(connection, key, change.tenant, change.enabled, change.changed_by)
        log.info(
            "flag %s for %s is %s (by %s)",
            key,
            change.tenant or "all tenants",
            "on" if row.enabled else "off",
            row.changed_by or "unknown",
        )
        return _flag_json(row)

    def flags(self) -> list[Json]:
        with self.engine.connect() as connection:
            return [_flag_json(row) for row in list_flags(connection)]

    def healthy(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True


def _first_error(errors: Sequence[Any]) -> str:
    if not errors:
        return "invalid request"
    where = ".".join(str(part) for part in errors[0]["loc"]) or "body"
    return f"{where}: {errors[0]['msg']}"


def _error(request: Request, status: int, code: str, detail: str) -> JSONResponse:
    request.state.code = code
    return JSONResponse({"code": code, "detail": detail}, status_code=status)


def create_app(settings: Settings) -> FastAPI:
    service = Service(settings, engine_for(settings.database_url), Metrics())
    service.prime_metrics()
    app = FastAPI(title="reference ledger service", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def count_responses(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            response = await call_next(request)
        except Exception:
            _count(request, 500, "INTERNAL_ERROR")
            raise
        default = "OK" if response.status_code < 400 else "HTTP_ERROR"
        _count(request, response.status_code, getattr(request.state, "code", default))
        return response

    def _count(request: Request, status: int, code: str) -> None:
        route = getattr(request.scope.get("route"), "path", "unmatched")
        if route not in UNCOUNTED_ROUTES:
            tenant = getattr(request.state, "tenant", UNKNOWN_TENANT)
            service.metrics.response(route, status, code, tenant)

    @app.exception_handler(LedgerError)
    async def ledger_error(request: Request, error: LedgerError) -> JSONResponse:
        return _error(request, error.status, error.code, error.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(request, 422, "INVALID_PAYLOAD", _first_error(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = "NOT_FOUND" if error.status_code == 404 else f"HTTP_{error.status_code}"
        return _error(request, error.status_code, code, str(error.detail))

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        faults = sorted(fault.value for fault in settings.faults)
        if not service.healthy():
            return JSONResponse({"status": "unavailable", "faults": faults}, status_code=503)
        return JSONResponse({"status": "ok", "faults": faults})

    @app.get("/metrics")
    def metrics() -> Response:
        service.prime_metrics()  # tenants created since start appear at 0 too
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post(WEBHOOK_ROUTE)
    async def deposit_webhook(provider: str, request: Request) -> Json:
        body = await request.body()  # the signature covers the raw bytes
        signed = signature_valid(settings.webhook_secret, body, request.headers.get(HEADER))
        return await run_in_threadpool(service.deposit, request, provider, body, signed)

    @app.get("/wallets/{wallet_id}")
    def read_wallet(wallet_id: int, request: Request) -> Json:
        return service.read_wallet(request, wallet_id)

    @app.post(WITHDRAW_ROUTE, status_code=201)
    def withdraw(wallet_id: int, body: WithdrawalRequest, request: Request) -> Json:
        return service.withdraw(request, wallet_id, body.amount)

    @app.post("/admin/withdrawals/{withdrawal_id}/approve")
    def approve(withdrawal_id: int, request: Request) -> Json:
        return service.move(request, withdrawal_id, ledger.APPROVED)

    @app.post("/admin/withdrawals/{withdrawal_id}/mark-paid")
    def mark_paid(withdrawal_id: int, request: Request) -> Json:
        return service.move(request, withdrawal_id, ledger.PAID)

    @app.post("/admin/withdrawals/{withdrawal_id}/reject")
    def reject(withdrawal_id: int, request: Request) -> Json:
        return service.reject(request, withdrawal_id)

    @app.get("/admin/flags")
    def read_flags() -> list[Json]:
        return service.flags()

    @app.put("/admin/flags/{key}")
    def change_flag(key: str, body: FlagChange, request: Request) -> Json:
        return service.set_flag(request, key, body)

    return app
