"""Balance changes of the reference service. Each change moves the legacy balance and, with
shadow-write on, writes its ledger entry in the same transaction as the caller's; the wallet
row is locked first (SELECT ... FOR UPDATE) so concurrent changes to one wallet serialise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.engine import Connection

from .flags import Flags
from .settings import Fault

# Accepted deposit events live in reconciliation_findings: its UNIQUE (provider,
# provider_event_id, finding_type) is the schema's only key on a provider event. Rows are
# written resolved, so they never read as open findings.
DEPOSIT_APPLIED = "webhook_deposit_applied"


class LedgerError(Exception):
    """A refusal the API answers with `status` and the JSON error `code`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class LockedWallet:
    id: int
    tenant: str
    balance: Decimal


@dataclass(frozen=True)
class Wallet:
    id: int
    tenant: str
    owner_ref: str
    currency: str
    legacy_balance: Decimal
    ledger_balance: Decimal


@dataclass(frozen=True)
class Withdrawal:
    id: int
    wallet_id: int
    tenant: str
    amount: Decimal
    status: str


@dataclass(frozen=True)
class Mismatch:
    tenant: str
    wallet_id: int
    legacy: Decimal
    ledger: Decimal


@dataclass(frozen=True)
class Deposit:
    duplicate: bool
    wallet_id: int
    mismatch: Mismatch | None = None


@dataclass(frozen=True)
class WithdrawalChange:
    withdrawal: Withdrawal
    mismatch: Mismatch | None = None


_LEDGER_SUM = "coalesce((SELECT sum(amount) FROM ledger_entries WHERE wallet_id = :id), 0)"


def read_wallet(connection: Connection, wallet_id: int) -> Wallet:
    row = connection.execute(
        text(
            "SELECT id, tenant_id, owner_ref, currency, balance,"
            f" {_LEDGER_SUM} FROM wallets WHERE id = :id"
        ),
        {"id": wallet_id},
    ).one_or_none()
    if row is None:
        raise LedgerError(404, "WALLET_NOT_FOUND", f"no wallet {wallet_id}")
    return Wallet(*row)


def find_wallet(
    connection: Connection,
    tenant: str,
    *,
    wallet_id: int | None,
    owner_ref: str | None,
    currency: str,
) -> int:
    """The id of the tenant's wallet named by id or by owner reference and currency."""
    found = connection.execute(
        text(
            "SELECT id FROM wallets WHERE tenant_id = :tenant"
            " AND (id = :id OR (owner_ref = :owner_ref AND currency = :currency))"
        ),
        {"tenant": tenant, "id": wallet_id, "owner_ref": owner_ref, "currency": currency},
    ).scalar_one_or_none()
    if found is None:
        raise LedgerError(404, "WALLET_NOT_FOUND", f"no such wallet for tenant {tenant}")
    return int(found)


def lock_wallet(connection: Connection, wallet_id: int) -> LockedWallet:
    row = connection.execute(
        text("SELECT id, tenant_id, balance FROM wallets WHERE id = :id FOR UPDATE"),
        {"id": wallet_id},
    ).one_or_none()
    if row is None:
        raise LedgerError(404, "WALLET_NOT_FOUND", f"no wallet {wallet_id}")
    return LockedWallet(*row)


def lock_withdrawal(connection: Connection, withdrawal_id: int) -> Withdrawal:
    row = connection.execute(
        text(
            "SELECT id, wallet_id, tenant_id, amount, status FROM withdrawals"
            " WHERE id = :id FOR UPDATE"
        ),
        {"id": withdrawal_id},
    ).one_or_none()
    if row is None:
        raise LedgerError(404, "WITHDRAWAL_NOT_FOUND", f"no withdrawal {withdrawal_id}")
    return Withdrawal(*row)


def _change_balance(
    connection: Connection,
    wallet: LockedWallet,
    flags: Flags,
    faults: frozenset[Fault],
    *,
    amount: Decimal,
    entry_type: str,
    reference: str,
    legacy_times: int = 1,
) -> Mismatch | None:
    """Move the legacy balance by `amount` (times `legacy_times`, for the double-apply fault)
    and, with shadow-write on, record the ledger entry; then compare if the flag asks to."""
    connection.execute(
        text("UPDATE wallets SET balance = balance + :delta WHERE id = :id"),
        {"delta": amount * legacy_times, "id": wallet.id},
    )
    if flags.shadow_write and Fault.SKIP_LEDGER_WRITE not in faults:
        connection.execute(
            text(
                "INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type, reference)"
                " VALUES (:id, :tenant, :amount, :entry_type, :reference)"
            ),
            {
                "id": wallet.id,
                "tenant": wallet.tenant,
                "amount": amount,
                "entry_type": entry_type,
                "reference": reference,
            },
        )
    return _compare(connection, wallet) if flags.mismatch_log else None


def _compare(connection: Connection, wallet: LockedWallet) -> Mismatch | None:
    legacy, ledger = connection.execute(
        text(f"SELECT balance, {_LEDGER_SUM} FROM wallets WHERE id = :id"), {"id": wallet.id}
    ).one()
    return None if legacy == ledger else Mismatch(wallet.tenant, wallet.id, legacy, ledger)


def deposit(
    connection: Connection,
    wallet: LockedWallet,
    flags: Flags,
    faults: frozenset[Fault],
    *,
    provider: str,
    event_id: str,
    amount: Decimal,
) -> Deposit:
    """Credit a provider's deposit once: a replayed (provider, event_id) credits nothing."""
    recorded = connection.execute(
        text(
            "INSERT INTO reconciliation_findings"
            " (provider, provider_event_id, finding_type, tenant_id, wallet_id, details, resolved)"
            " VALUES (:provider, :event_id, :finding_type, :tenant, :wallet_id,"
            " CAST(:details AS jsonb), true)"
            " ON CONFLICT ON CONSTRAINT uq_recon_provider_event_type DO NOTHING RETURNING id"
        ),
        {
            "provider": provider,
            "event_id": event_id,
            "finding_type": DEPOSIT_APPLIED,
            "tenant": wallet.tenant,
            "wallet_id": wallet.id,
            "details": json.dumps({"amount": str(amount)}),
        },
    ).scalar_one_or_none()
    if recorded is None:
        first = connection.execute(
            text(
                "SELECT wallet_id FROM reconciliation_findings WHERE provider = :provider"
                " AND provider_event_id = :event_id AND finding_type = :finding_type"
            ),
            {"provider": provider, "event_id": event_id, "finding_type": DEPOSIT_APPLIED},
        ).scalar_one()
        return Deposit(duplicate=True, wallet_id=int(first))
    times = 2 if Fault.DOUBLE_APPLY_WEBHOOK in faults else 1
    mismatch = _change_balance(
        connection,
        wallet,
        flags,
        faults,
        amount=amount,
        entry_type="deposit",
        reference=f"{provider}:{event_id}",
        legacy_times=times,
    )
    return Deposit(duplicate=False, wallet_id=wallet.id, mismatch=mismatch)


def withdraw(
    connection: Connection,
    wallet: LockedWallet,
    flags: Flags,
    faults: frozenset[Fault],
    amount: Decimal,
) -> WithdrawalChange:
    """Request a withdrawal and debit it now. With enforce-balance on the ledger decides
    whether the funds are there; otherwise the legacy balance does."""
    available = (
        connection.execute(text(f"SELECT {_LEDGER_SUM}"), {"id": wallet.id}).scalar_one()
        if flags.enforce_balance
        else wallet.balance
    )
    if amount > available:
        source = "ledger" if flags.enforce_balance else "legacy"
        raise LedgerError(400, "INSUFFICIENT_FUNDS", f"{source} balance {available} < {amount}")
    withdrawal_id = connection.execute(
        text(
            "INSERT INTO withdrawals (wallet_id, tenant_id, amount)"
            " VALUES (:id, :tenant, :amount) RETURNING id"
        ),
        {"id": wallet.id, "tenant": wallet.tenant, "amount": amount},
    ).scalar_one()
    mismatch = _change_balance(
        connection,
        wallet,
        flags,
        faults,
        amount=-amount,
        entry_type="withdrawal",
        reference=f"withdrawal:{withdrawal_id}",
    )
    withdrawal = Withdrawal(withdrawal_id, wallet.id, wallet.tenant, amount, "requested")
    return WithdrawalChange(withdrawal, mismatch)


APPROVED, PAID, REJECTED = "approved", "paid", "rejected"
# status -> (statuses it may be reached from, the timestamp column it sets)
_TRANSITIONS = {
    APPROVED: (("requested",), "approved_at"),
    PAID: (("approved",), "paid_at"),
    REJECTED: (("requested", "approved"), None),
}


def move(connection: Connection, withdrawal: Withdrawal, status: str) -> Withdrawal:
    """A state change without money: approve (requested -> approved), mark paid (approved ->
    paid; the money left at request time). The caller holds the withdrawal's row lock."""
    sources, stamp = _TRANSITIONS[status]
    if withdrawal.status not in sources:
        raise LedgerError(
            409,
            "WITHDRAWAL_STATE_CONFLICT",
            f"withdrawal {withdrawal.id} is {withdrawal.status}, not {' or '.join(sources)}",
        )
    stamp_sql = f", {stamp} = now()" if stamp else ""
    connection.execute(
        text(f"UPDATE withdrawals SET status = :status{stamp_sql} WHERE id = :id"),
        {"status": status, "id": withdrawal.id},
    )
    return Withdrawal(
        withdrawal.id, withdrawal.wallet_id, withdrawal.tenant, withdrawal.amount, status
    )


def reject(
    connection: Connection,
    withdrawal: Withdrawal,
    wallet: LockedWallet,
    flags: Flags,
    faults: frozenset[Fault],
) -> WithdrawalChange:
    """Reject a requested or approved (not yet paid) withdrawal and give the money back:
    legacy credit plus a withdrawal_reversal entry with shadow-write on."""
    rejected = move(connection, withdrawal, REJECTED)
    mismatch = _change_balance(
        connection,
        wallet,
        flags,
        faults,
        amount=withdrawal.amount,
        entry_type="withdrawal_reversal",
        reference=f"withdrawal:{withdrawal.id}",
    )
    return WithdrawalChange(rejected, mismatch)
