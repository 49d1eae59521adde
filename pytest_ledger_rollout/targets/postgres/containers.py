"""testcontainers provider: the configured PostgreSQL image in a Docker container.

The container has a name chosen before it is created, and a watchdog process removes it by that
name if this process dies without stopping it (SIGKILL included), so cleanup does not depend on
testcontainers' Ryuk reaper (often disabled: its image must be pulled, its socket mounted).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import socket
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    EphemeralUnavailable,
    watchdog,
)
from pytest_ledger_rollout.targets.postgres.local import SUPERUSER, new_password

if TYPE_CHECKING:
    from testcontainers.community.postgres import PostgresContainer

PROBE_TIMEOUT = 3  # seconds; without an engine the probe fails in milliseconds anyway
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"  # docker-py's default too
NO_ENGINE_FIX = "start one (or point DOCKER_HOST at it), or use provider=local"
NO_IMAGE_FIX = "build or pull it, or use provider=local, or set [targets.NAME] image to one it has"
CONTAINER_PORT = 5432
NAME_PREFIX = "ledger-rollout-pg-"


@dataclass(frozen=True)
class EngineProbe:
    """Whether testcontainers can run ``image`` here, and why (one line for the report)."""

    usable: bool
    reason: str
    fix: str = ""  # when not usable: what to do, in one sentence


@dataclass(eq=False)
class ContainerServer(EphemeralServer):
    container: PostgresContainer = field(repr=False)
    guard: subprocess.Popen[bytes] = field(repr=False)  # the watchdog; EOF on its stdin = remove
    name: str = ""
    container_id: str = ""
    # The container's own addresses on its networks, as the engine reports them.
    network_addresses: tuple[str, ...] = ()

    @property
    def server_addresses(self) -> tuple[str, ...]:
        return self.network_addresses

    def _shut_down(self) -> None:
        try:
            self.container.stop()  # removes the container and its volumes
        except Exception:
            watchdog.release(self.guard)  # EOF without "released": the watchdog removes it
            raise
        watchdog.release(self.guard, watchdog.RELEASED)


def _only_default_engine_configured() -> bool:
    """Nothing points testcontainers anywhere but docker-py's default socket."""
    home = Path.home()
    return not (
        os.environ.get("DOCKER_HOST")
        or (home / ".testcontainers.properties").exists()
        or (home / ".docker" / "contexts").exists()
    )


def probe(image: str) -> EngineProbe:
    """One quick probe, resolving the engine the way testcontainers will (DOCKER_HOST, config),
    then the image: present on the engine, or known to its registry (so it can be pulled)."""
    # The common case, no engine and nothing configured, is answered without importing
    # docker-py and testcontainers (~70 ms of every run).
    if _only_default_engine_configured() and not _unix_socket_answers(
        DEFAULT_DOCKER_HOST.removeprefix("unix://")
    ):
        return EngineProbe(
            False, f"no Docker engine answers at {DEFAULT_DOCKER_HOST}", NO_ENGINE_FIX
        )
    from docker.errors import DockerException, ImageNotFound
    from requests import RequestException
    from testcontainers.core.docker_client import DockerClient, get_docker_host

    host = get_docker_host() or DEFAULT_DOCKER_HOST
    no_engine = EngineProbe(False, f"no Docker engine answers at {host}", NO_ENGINE_FIX)
    # docker-py leaks the socket of a failed unix connect (a ResourceWarning, an error under
    # pytest -W error), so a dead unix socket is detected here first.
    if host.startswith("unix://") and not _unix_socket_answers(host.removeprefix("unix://")):
        return no_engine
    try:
        client = DockerClient(timeout=PROBE_TIMEOUT)  # fetches the API version
    except DockerException:
        return no_engine
    try:
        if not client.client.ping():
            return no_engine
        try:
            client.client.images.get(image)
            return EngineProbe(True, f"the Docker engine at {host} has the image {image}")
        except ImageNotFound:
            pass
        try:
            client.client.images.get_registry_data(image)
            return EngineProbe(True, f"the Docker engine at {host} can pull the image {image}")
        except DockerException as exc:
            why = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:200]
            return EngineProbe(
                False,
                f"the Docker engine at {host} has no image {image} and cannot pull it ({why})",
                NO_IMAGE_FIX,
            )
    except (DockerException, RequestException):
        return no_engine
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


def unavailable(found: EngineProbe) -> EphemeralUnavailable:
    return EphemeralUnavailable(f"provider=testcontainers cannot run: {found.reason};\n{found.fix}")


def _postgres_container_class() -> type[PostgresContainer]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # older testcontainers; the new path exists since the community split
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.postgres import PostgresContainer
    return PostgresContainer


def _watchdog_env() -> dict[str, str]:
    """The watchdog must reach the engine testcontainers uses (its config file included), and
    gets nothing else of the operator's (no DATABASE_URL, no webhook secret)."""
    from testcontainers.core.docker_client import get_docker_host

    docker = {k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}
    host = get_docker_host()
    return {**watchdog.child_environment(), **docker, **({"DOCKER_HOST": host} if host else {})}


def _network_addresses(container: PostgresContainer) -> tuple[str, ...]:
    wrapped = container.get_wrapped_container()
    wrapped.reload()  # the cached attrs are the create response's, before any network
    settings = wrapped.attrs["NetworkSettings"]
    networks = list((settings.get("Networks") or {}).values())
    found = {settings.get("IPAddress")}
    found |= {net.get(key) for net in networks for key in ("IPAddress", "GlobalIPv6Address")}
    return tuple(sorted(address for address in found if address))


def start(settings: EphemeralSettings) -> ContainerServer:
    """Start a container; the caller has probed the engine and the image."""
    from docker.errors import DockerException

    container_class = _postgres_container_class()
    password = new_password()
    name = NAME_PREFIX + secrets.token_hex(6)
    try:
        container = container_class(
            image=settings.image,
            username=SUPERUSER,
            password=password,
            dbname=settings.database,
            driver="psycopg",
        ).with_name(name)
        env = _watchdog_env()
    except DockerException as exc:
        raise unavailable(EngineProbe(False, "no Docker engine answers", NO_ENGINE_FIX)) from exc
    # Before the container exists; it outlives us on purpose.
    guard = watchdog.spawn(watchdog.CONTAINER, name, env=env)
    server = ContainerServer(
        provider="testcontainers",
        host="127.0.0.1",
        port=0,
        user=SUPERUSER,
        password=password,
        database=settings.database,
        container=container,
        guard=guard,
        name=name,
    )
    atexit.register(server.stop)
    failure = None
    try:
        container.start()
        host = container.get_container_host_ip()
        server.host = "127.0.0.1" if host == "localhost" else host  # same URL shape as local
        server.port = int(container.get_exposed_port(CONTAINER_PORT))
        server.container_id = container.get_container_id()
        server.network_addresses = _network_addresses(container)
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
