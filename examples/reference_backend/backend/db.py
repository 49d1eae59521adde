"""Database access shared by the service and the scripts: the URL from DATABASE_URL (normalised
as migrations/env.py does) and a masked form of it that is safe to print."""

from __future__ import annotations

import os
from collections.abc import Mapping

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

# libpq-style URLs name no driver; this project speaks psycopg 3 (as migrations/env.py).
_LIBPQ_PREFIXES = ("postgres://", "postgresql://")


def database_url(env: Mapping[str, str] = os.environ) -> str:
    url = env.get("DATABASE_URL", "")
    if not url:
        raise SystemExit("DATABASE_URL is not set: export the Postgres URL of the ledger database")
    for prefix in _LIBPQ_PREFIXES:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def masked(url: str) -> str:
    """host:port/database only: never the user or the password."""
    parsed = make_url(url)
    return f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"


def engine_for(url: str, *, pool_size: int = 5) -> Engine:
    # hide_parameters keeps bound values (amounts, references) out of exception text.
    return create_engine(url, pool_size=pool_size, pool_pre_ping=True, hide_parameters=True)
