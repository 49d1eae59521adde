"""The real Docker engine for the container tests: the project's private engine and its locally
built images (scripts/docker-engine, scripts/postgres-image; scripts/test exports DOCKER_HOST)."""

from __future__ import annotations

import os
from pathlib import Path

import docker

from pytest_ledger_rollout.targets.postgres import containers

from .support import missing_component

# Built by scripts/postgres-image (keep in step with its IMAGE and BASE).
LOCAL_POSTGRES_IMAGE = "ledger-rollout/postgres:15-local"
ROOTFS_IMAGE = "ledger-rollout/bookworm-rootfs:15-local"  # python3 + libpq: the app-host base
SETUP_HINT = (
    "as root run scripts/test (it starts the engine and builds the image), or export "
    "DOCKER_HOST=$(scripts/docker-engine) after DOCKER_HOST=… scripts/postgres-image, "
    "TESTCONTAINERS_RYUK_DISABLED=true and TESTCONTAINERS_CONNECTION_MODE=docker_host"
)


def require_engine() -> None:
    """The engine with the local image, set up the way testcontainers needs it here."""
    found = containers.probe(LOCAL_POSTGRES_IMAGE)
    if not found.usable:
        missing_component(
            "a Docker engine with the local Postgres image", f"{found.reason}; {SETUP_HINT}"
        )
    if Path("/.dockerenv").exists() and os.environ.get("TESTCONTAINERS_CONNECTION_MODE") != (
        "docker_host"
    ):
        missing_component(
            "testcontainers' docker_host connection mode",
            "/.dockerenv exists, so testcontainers would dial the bridge gateway: "
            "export TESTCONTAINERS_CONNECTION_MODE=docker_host",
        )


def containers_named(name: str) -> list[str]:
    """Names of containers (running or not) whose name contains ``name``."""
    client = docker.from_env()
    try:
        # One listing call: containers.list() inspects each listed container afterwards, and
        # one removed in between (what the callers wait for) raised NotFound.
        listed = client.api.containers(all=True, filters={"name": name})
        return [str(entry["Names"][0]).lstrip("/") for entry in listed]
    finally:
        client.close()
