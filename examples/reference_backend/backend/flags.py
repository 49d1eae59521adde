"""Feature flags in `feature_flags`: a global row (tenant_id NULL) and per-tenant overrides.
A tenant row beats the global row; a missing flag is off. Read on every request, inside the
request's transaction, so a flip takes effect on the very next request."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection

SHADOW_WRITE = "ledger_shadow_write"
MISMATCH_LOG = "ledger_balance_mismatch_log"
SIGNATURE_ENFORCED = "webhook_signature_enforced"
ENFORCE_BALANCE = "ledger_enforce_balance"
KNOWN_FLAGS = (SHADOW_WRITE, MISMATCH_LOG, SIGNATURE_ENFORCED, ENFORCE_BALANCE)


@dataclass(frozen=True)
class Flags:
    shadow_write: bool
    mismatch_log: bool
    signature_enforced: bool
    enforce_balance: bool


@dataclass(frozen=True)
class FlagRow:
    key: str
    tenant: str | None
    enabled: bool
    changed_at: dt.datetime
    changed_by: str | None


def flags_for(connection: Connection, tenant: str | None) -> Flags:
    # NULLS LAST puts the tenant's row, when there is one, first for each key.
    rows = connection.execute(
        text(
            "SELECT DISTINCT ON (key) key, enabled FROM feature_flags"
            " WHERE key = ANY(:keys) AND (tenant_id IS NULL OR tenant_id = :tenant)"
            " ORDER BY key, tenant_id NULLS LAST"
        ),
        {"keys": list(KNOWN_FLAGS), "tenant": tenant},
    ).all()
    enabled = {key for key, on in rows if on}
    return Flags(
        shadow_write=SHADOW_WRITE in enabled,
        mismatch_log=MISMATCH_LOG in enabled,
        signature_enforced=SIGNATURE_ENFORCED in enabled,
        enforce_balance=ENFORCE_BALANCE in enabled,
    )


_COLUMNS = "key, tenant_id, enabled, changed_at, changed_by"


def set_flag(
    connection: Connection, key: str, tenant: str | None, enabled: bool, changed_by: str | None
) -> FlagRow:
    """Upsert one flag. changed_at moves only when the state changes, so re-asserting a flag
    does not rewrite when it was flipped (the rollout checks flip order from it)."""
    connection.execute(
        text(
            "INSERT INTO feature_flags (key, tenant_id, enabled, changed_at, changed_by)"
            " VALUES (:key, :tenant, :enabled, now(), :changed_by)"
            " ON CONFLICT (key, (coalesce(tenant_id, ''))) DO UPDATE"
            " SET enabled = excluded.enabled, changed_at = excluded.changed_at,"
            " changed_by = excluded.changed_by"
            " WHERE feature_flags.enabled IS DISTINCT FROM excluded.enabled"
        ),
        {"key": key, "tenant": tenant, "enabled": enabled, "changed_by": changed_by},
    )
    row = connection.execute(
        text(
            f"SELECT {_COLUMNS} FROM feature_flags"
            " WHERE key = :key AND coalesce(tenant_id, '') = coalesce(:tenant, '')"
        ),
        {"key": key, "tenant": tenant},
    ).one()
    return FlagRow(*row)


def list_flags(connection: Connection) -> list[FlagRow]:
    rows = connection.execute(
        text(f"SELECT {_COLUMNS} FROM feature_flags ORDER BY key, tenant_id NULLS FIRST")
    ).all()
    return [FlagRow(*row) for row in rows]
