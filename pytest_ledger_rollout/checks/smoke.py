"""Runbook 2.4's withdrawals smoke, spoken over HTTP to the ledger service (the contract in
README "Reference service API"): a signed deposit credits once, a replay credits nothing, a
bad signature gets 401, withdraw -> approve -> mark-paid leaves wallet and ledger equal, and an
over-withdrawal gets 400 INSUFFICIENT_FUNDS with enforcement on."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.ledger import LedgerTables
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed

SIGNATURE_HEADER = "X-Signature"


@dataclass(frozen=True)
class SmokeSettings:
    tenant: str = "t-001"
    owner_ref: str = "u-000001"  # the smoke wallet: it receives deposits and pays withdrawals
    provider: str = "rollout-smoke"
    deposit: Decimal = Decimal("25.00")
    withdrawal: Decimal = Decimal("10.00")
    external_command: str | None = None  # the team's own e2e spec, e.g. yarn test:e2e -- …
    external_dir: str | None = None  # where it runs (on the app host)


class _SmokeFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class _Conversation:
    """Every exchange with the service, kept as evidence (status and body hash, body head)."""

    base_url: str
    session: requests.Session
    lines: list[str]

    def call(
        self, step: str, method: str, path: str, expect: int, *, body: bytes | None = None,
        headers: dict[str, str] | None = None, code: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        try:
            response = self.session.request(
                method, self.base_url + path, data=body, headers=headers, timeout=15
            )
        except requests.RequestException as exc:
            self.lines.append(f"{step}: {method} {path} -> {type(exc).__name__}")
            raise _SmokeFailed(
                Failure(
                    f"Smoke step '{step}': the service did not answer",
                    expected=f"{method} {path} -> {expect}",
                    seen=type(exc).__name__,
                    remedy="Check the target's service_url and that the service is up.",
                )
            ) from None
        digest = hashlib.sha256(response.content).hexdigest()[:16]
        self.lines.append(
            f"{step}: {method} {path} -> {response.status_code} body sha256:{digest} "
            f"{response.text[:160]!r}"
        )
        try:
            document = response.json()
        except ValueError:
            document = None
        seen_code = document.get("code") if isinstance(document, dict) else None
        if response.status_code != expect or (code is not None and seen_code != code):
            raise _SmokeFailed(
                Failure(
                    f"Smoke step '{step}' answered {response.status_code}"
                    + (f" {seen_code}" if seen_code else ""),
                    expected=f"{method} {path} -> {expect}" + (f" {code}" if code else ""),
                    seen=f"{response.status_code} {response.text[:300]}",
                    remedy=(
                        "With ledger_enforce_balance on, this flow must be stable (runbook 2.4 "
                        "DoD): turn enforcement off again and investigate the service."
                    ),
                )
            )
        return document if isinstance(document, dict) else {}


def run_withdrawals_smoke(
    service_url: str | None,
    webhook_secret: str | None,
    settings: SmokeSettings,
    connection: Connection,
    tables: LedgerTables,
) -> CheckResult:
    if not service_url or not webhook_secret:
        missing = "service_url" if not service_url else "the webhook secret variable"
        return failed(
            Failure(
                "The withdrawals smoke cannot run",
                expected="the service's URL and the webhook signing secret",
                seen=f"no {missing} for this target",
                remedy="Set [targets.NAME] service_url and export the webhook_secret_env variable.",
            )
        )
    talk = _Conversation(service_url.rstrip("/"), requests.Session(), [])
    try:
        summary = _smoke(talk, webhook_secret, settings, connection, tables)
    except _SmokeFailed as stop:
        return failed(stop.failure, Evidence("smoke conversation", "\n".join(talk.lines)))
    finally:
        talk.session.close()
    return passed(summary, Evidence("smoke conversation", "\n".join(talk.lines)))


def _smoke(
    talk: _Conversation,
    secret: str,
    settings: SmokeSettings,
    connection: Connection,
    tables: LedgerTables,
) -> str:
    event = {
        "event_id": f"smoke-{uuid.uuid4().hex}",
        "tenant": settings.tenant,
        "owner_ref": settings.owner_ref,
        "amount": str(settings.deposit),
    }
    body = json.dumps(event).encode()
    signed = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    deposits = f"/webhooks/{settings.provider}/deposits"
    first = talk.call("signed deposit", "POST", deposits, 200, body=body, headers=signed)
    wallet_id = first.get("wallet_id")
    if first.get("duplicate") is not False or not isinstance(wallet_id, int):
        raise _SmokeFailed(
            _unexpected("signed deposit", "a credited deposit naming its wallet", first)
        )
    credited = _balances(talk, wallet_id, "after the deposit")
    replay = talk.call("replayed deposit", "POST", deposits, 200, body=body, headers=signed)
    if replay.get("duplicate") is not True:
        raise _SmokeFailed(_unexpected("replayed deposit", '"duplicate": true', replay))
    if _balances(talk, wallet_id, "after the replay") != credited:
        raise _SmokeFailed(
            Failure(
                "A replayed deposit credited the wallet again",
                expected=f"balances unchanged at {credited}",
                seen="the balances moved",
                remedy="Webhook idempotency is broken: keep enforcement off and fix the service.",
            )
        )
    forged = {**signed, SIGNATURE_HEADER: sign(secret + "-wrong", body)}
    talk.call("badly signed deposit", "POST", deposits, 401, body=body, headers=forged,
              code="WEBHOOK_SIGNATURE_INVALID")  # fmt: skip
    amount = json.dumps({"amount": str(settings.withdrawal)}).encode()
    json_headers = {"Content-Type": "application/json"}
    withdrawal = talk.call("withdraw", "POST", f"/wallets/{wallet_id}/withdrawals", 201,
                           body=amount, headers=json_headers)  # fmt: skip
    withdrawal_id = withdrawal.get("id")
    talk.call("approve", "POST", f"/admin/withdrawals/{withdrawal_id}/approve", 200)
    paid = talk.call("mark paid", "POST", f"/admin/withdrawals/{withdrawal_id}/mark-paid", 200)
    if paid.get("status") != "paid":
        raise _SmokeFailed(_unexpected("mark paid", 'status "paid"', paid))
    legacy, ledger = _balances(talk, wallet_id, "after the payout")
    stored = _stored_balances(connection, tables, wallet_id)
    if legacy != ledger or stored != (legacy, ledger):
        raise _SmokeFailed(
            Failure(
                "After withdraw -> approve -> mark-paid, wallet and ledger differ",
                expected="legacy balance = ledger balance, in the API and in the database",
                seen=f"API: legacy {legacy}, ledger {ledger}; database: {stored}",
                remedy="Shadow writes are lost on the withdrawal path: turn enforcement off.",
            )
        )
    too_much = json.dumps({"amount": str(ledger + Decimal("1.00"))}).encode()
    talk.call("over-withdrawal", "POST", f"/wallets/{wallet_id}/withdrawals", 400,
              body=too_much, headers=json_headers, code="INSUFFICIENT_FUNDS")  # fmt: skip
    if _balances(talk, wallet_id, "after the refused withdrawal") != (legacy, ledger):
        raise _SmokeFailed(
            Failure(
                "A refused withdrawal moved the balances",
                expected=f"balances unchanged at {legacy}",
                seen="the balances moved",
                remedy="The service debits before it checks: keep enforcement off and fix it.",
            )
        )
    return (
        f"deposit {settings.deposit} credited once, replay ignored, bad signature 401, "
        f"withdraw/approve/mark-paid {settings.withdrawal}: wallet = ledger = {ledger}, "
        "over-withdrawal 400 INSUFFICIENT_FUNDS"
    )


def _balances(talk: _Conversation, wallet_id: int, when: str) -> tuple[Decimal, Decimal]:
    wallet = talk.call(f"read wallet {when}", "GET", f"/wallets/{wallet_id}", 200)
    try:
        return Decimal(str(wallet["legacy_balance"])), Decimal(str(wallet["ledger_balance"]))
    except (KeyError, ArithmeticError):
        raise _SmokeFailed(
            _unexpected("read wallet", "legacy_balance and ledger_balance", wallet)
        ) from None


def _stored_balances(
    connection: Connection, tables: LedgerTables, wallet_id: int
) -> tuple[Decimal, Decimal]:
    q = connection.dialect.identifier_preparer.quote
    row = connection.execute(
        text(
            f"SELECT w.{q(tables.legacy_balance)}, coalesce(sum(e.{q(tables.entry_amount)}), 0)"
            f" FROM {q(tables.wallets)} w LEFT JOIN {q(tables.entries)} e"
            f" ON e.{q(tables.entry_wallet)} = w.{q(tables.wallet_id)}"
            f" WHERE w.{q(tables.wallet_id)} = :id GROUP BY w.{q(tables.legacy_balance)}"
        ),
        {"id": wallet_id},
    ).one()
    connection.rollback()  # a fresh snapshot for the next read
    return Decimal(row[0]), Decimal(row[1])


def _unexpected(step: str, expected: str, answer: dict[str, Any]) -> Failure:
    return Failure(
        f"Smoke step '{step}' answered something unexpected",
        expected=expected,
        seen=json.dumps(answer)[:300],
        remedy="The service does not speak the smoke's contract (README 'Reference service API').",
    )
