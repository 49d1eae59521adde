"""Service settings, read once from the environment at start."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .db import database_url


class Fault(enum.Enum):
    """Fault switches for tests; the value is the environment variable that turns one on."""

    # Shadow writes are skipped (the legacy balance still moves): mismatches appear.
    SKIP_LEDGER_WRITE = "LEDGER_FAULT_SKIP_LEDGER_WRITE"
    # An accepted deposit credits the legacy balance twice (the ledger once).
    DOUBLE_APPLY_WEBHOOK = "LEDGER_FAULT_DOUBLE_APPLY_WEBHOOK"


_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)
    webhook_secret: bytes = field(repr=False)
    faults: frozenset[Fault] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        secret = env.get("WEBHOOK_SECRET", "")
        if not secret:
            raise SystemExit(
                "WEBHOOK_SECRET is not set: export the secret payment providers sign webhooks with"
            )
        faults = frozenset(f for f in Fault if env.get(f.value, "").strip().lower() in _TRUE)
        return cls(database_url(env), secret.encode(), faults)
