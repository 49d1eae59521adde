"""Throwaway PostgreSQL servers for the rollout suites.

Two providers: ``testcontainers`` (a pinned image in Docker) and ``local`` (the PostgreSQL
server binaries installed on this machine). ``auto`` picks testcontainers when a Docker engine
answers and has the image or can pull it, else local binaries; the server says which and why.

The providers are imported inside :func:`start_ephemeral` so that importing this package stays
cheap (testcontainers pulls in SQLAlchemy) and the watchdog child starts fast.
"""

from __future__ import annotations

import atexit
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import quote

__all__ = [
    "EarlyServer",
    "EphemeralServer",
    "EphemeralSettings",
    "EphemeralUnavailable",
    "start_ephemeral",
]

PROVIDERS = ("auto", "testcontainers", "local")


@dataclass(frozen=True)
class EphemeralSettings:
    provider: str = "auto"  # "auto" | "testcontainers" | "local"
    image: str = "postgres:15.8-alpine"  # pinned image for testcontainers
    bindir: str | None = None  # folder of initdb/pg_ctl/postgres; overrides every other source
    # Only used when running as root (initdb refuses root); default "postgres", else "nobody".
    run_as: str | None = None
    database: str = "ledger"  # database created on the server

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}: {self.provider!r}")


class EphemeralUnavailable(RuntimeError):
    """No provider can start a server here; the message says what to install or do."""


@dataclass(eq=False)
class EphemeralServer(ABC):
    """A running throwaway server; ``stop()`` (or leaving the ``with`` block) removes it."""

    provider: str  # "local" or "testcontainers"
    host: str
    port: int
    user: str
    password: str = field(repr=False)  # raw superuser password, for secret scrubbing
    database: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL; the same shape for every provider."""
        return (
            f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.database, safe='')}"
        )

    stopped: bool = field(default=False, init=False, repr=False)
    # Which provider ran and why, in one line (for the report's environment).
    provider_reason: str = field(default="", init=False)

    @property
    def server_addresses(self) -> tuple[str, ...]:
        """What inet_server_addr() reports on this server: what proves a connection reached it."""
        return (self.host,)

    def stop(self) -> None:
        """Idempotent: afterwards no server process or container and no temp files remain."""
        if self.stopped:
            return
        self.stopped = True
        atexit.unregister(self.stop)
        self._shut_down()

    @abstractmethod
    def _shut_down(self) -> None:
        """Remove the server; called once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_ephemeral(settings: EphemeralSettings) -> EphemeralServer:
    from pytest_ledger_rollout.targets.postgres import containers, local

    server: EphemeralServer
    if settings.provider == "local":
        server, reason = local.start(settings), "provider = local (configured)"
    else:
        found = containers.probe(settings.image)
        if found.usable:
            server, reason = containers.start(settings), found.reason
        elif settings.provider == "testcontainers":
            raise containers.unavailable(found)
        else:
            server, reason = local.start(settings), f"{found.reason}, so auto uses local binaries"
    server.provider_reason = f"{server.provider}: {reason}"
    return server


@dataclass(frozen=True)
class EarlyServer:
    """A throwaway server starting in a thread (for the settings it was started with), so its
    start, which waits on initdb and pg_ctl or a container, overlaps other work."""

    settings: EphemeralSettings
    future: Future[EphemeralServer] = field(compare=False, repr=False)

    @classmethod
    def start(cls, settings: EphemeralSettings) -> EarlyServer:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-rollout-pg")
        future = executor.submit(start_ephemeral, settings)
        executor.shutdown(wait=False)
        return cls(settings, future)

    def stop(self) -> None:
        """Stop it once started (idempotent; a start that failed leaves nothing to stop)."""
        try:
            server = self.future.result()
        except BaseException:
            return
        server.stop()
