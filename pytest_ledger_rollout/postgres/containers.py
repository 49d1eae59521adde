"""testcontainers provider: the pinned PostgreSQL image in a Docker container.

If this process dies without stopping it, testcontainers' Ryuk reaper removes the container
(unless TESTCONTAINERS_RYUK_DISABLED is set).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import EphemeralServer, EphemeralSettings, EphemeralUnavailable
from .local import SUPERUSER, new_password

if TYPE_CHECKING:
    from testcontainers.community.postgres import PostgresContainer

PROBE_TIMEOUT = 3  # seconds; without an engine the probe fails in milliseconds anyway
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"  # docker-py's default too
NO_ENGINE = (
    "provider=testcontainers needs a running Docker engine and none answers;\n"
    "start one (or point DOCKER_HOST at it), or use provider=local"
)
CONTAINER_PORT = 5432


@dataclass(eq=False)
class ContainerServer(EphemeralServer):
    container: PostgresContainer = field(repr=False)

    def _shut_down(self) -> None:
        self.container.stop()  # removes the container and its volumes


def _only_default_engine_configured() -> bool:
    """Nothing points testcontainers anywhere but docker-py's default socket."""
    home = Path.home()
    return not (
        os.environ.get("DOCKER_HOST")
        or (home / ".testcontainers.properties").exists()
        or (home / ".docker" / "contexts").exists()
    )


def docker_engine_available() -> bool:
    """One quick probe, resolving the engine the way testcontainers will (DOCKER_HOST, config)."""
    # The common case, no engine and nothing configured, is answered without importing
    # docker-py and testcontainers (~70 ms of every run).
    if _only_default_engine_configured() and not _unix_socket_answers(
        DEFAULT_DOCKER_HOST.removeprefix("unix://")
    ):
        return False
    from docker.errors import DockerException
    from requests import RequestException
    from testcontainers.core.docker_client import DockerClient, get_docker_host

    host = get_docker_host() or DEFAULT_DOCKER_HOST
    # docker-py leaks the socket of a failed unix connect (a ResourceWarning, an error under
    # pytest -W error), so a dead unix socket is detected here first.
    if host.startswith("unix://") and not _unix_socket_answers(host.removeprefix("unix://")):
        return False
    try:
        client = DockerClient(timeout=PROBE_TIMEOUT)  # fetches the API version
    except DockerException:
        return False
    try:
        return bool(client.client.ping())
    except (DockerException, RequestException):
        return False
    finally:
        client.client.close()


def _unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _postgres_container_class() -> type[PostgresContainer]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # older testcontainers; the new path exists since the community split
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.postgres import PostgresContainer
    return PostgresContainer


def start(settings: EphemeralSettings) -> ContainerServer:
    """Start a container; the caller has checked docker_engine_available()."""
    from docker.errors import DockerException

    container_class = _postgres_container_class()
    password = new_password()
    try:
        container = container_class(
            image=settings.image,
            username=SUPERUSER,
            password=password,
            dbname=settings.database,
            driver="psycopg",
        )
    except DockerException as exc:
        raise EphemeralUnavailable(NO_ENGINE) from exc
    server = ContainerServer(
        provider="testcontainers",
        host="127.0.0.1",
        port=0,
        user=SUPERUSER,
        password=password,
        database=settings.database,
        container=container,
    )
    atexit.register(server.stop)
    failure = None
    try:
        container.start()
        host = container.get_container_host_ip()
        server.host = "127.0.0.1" if host == "localhost" else host  # same URL shape as local
        server.port = int(container.get_exposed_port(CONTAINER_PORT))
    except Exception as exc:
        with contextlib.suppress(Exception):  # the start failure is the news, not this
            server.stop()
        # testcontainers' wait-strategy timeout quotes its psql command, PGPASSWORD included,
        # so the original must not even ride along as __context__.
        details = "\n".join([str(exc), *getattr(exc, "__notes__", [])])
        failure = RuntimeError(
            f"starting {settings.image} failed ({type(exc).__name__}): "
            + details.replace(password, "***")
        )
    except BaseException:
        server.stop()
        raise
    if failure is not None:
        raise failure
    return server
