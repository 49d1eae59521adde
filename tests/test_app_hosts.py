"""Runbook 1.1 where the app runs: testinfra's docker:// (a container holding the reference
backend), ssh:// (a throwaway sshd on loopback) and kubectl:// (the command it builds, run by a
stand-in kubectl). The app reaches the database by another address than the suite, as a pod
or a port-forward does, and the check compares what the server says to each side."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import docker
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.checks.app_hosts import check_app_sees_same_database, run_on_app_host
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.processes import free_port
from pytest_ledger_rollout.results import CheckResult
from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    start_ephemeral,
)

from .container_engine import LOCAL_POSTGRES_IMAGE, ROOTFS_IMAGE, require_engine
from .support import CHAIN, HEAD, REFERENCE_BACKEND, REPO, missing_component

CONTAINER = EphemeralSettings(provider="testcontainers", image=LOCAL_POSTGRES_IMAGE)
ALEMBIC = AlembicProject(REFERENCE_BACKEND / "alembic.ini")
VENV_BIN = os.path.dirname(sys.executable)


@dataclass(frozen=True)
class Database:
    server: EphemeralServer
    engine: Engine  # the suite's side: 127.0.0.1 and the published port

    def app_url(self, host: str, port: int, database: str = "ledger") -> str:
        """What the app's environment holds: another address for the same server."""
        password = quote(self.server.password, safe="")
        return f"postgresql://{self.server.user}:{password}@{host}:{port}/{database}"

    def check(self, host_spec: str) -> CheckResult:
        scrubber = Scrubber()
        scrubber.register(self.server.password)
        with self.engine.connect() as suite:
            revisions = ALEMBIC.current(suite)
            return check_app_sees_same_database(
                host_spec, str(REFERENCE_BACKEND), "DATABASE_URL", suite, revisions, scrubber
            )


def migrated_database() -> Iterator[Database]:
    """A container at head, with a second database ``other`` at the baseline beside it."""
    require_engine()
    with start_ephemeral(CONTAINER) as server:
        admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            ALEMBIC.upgrade(connection, HEAD)
            connection.execute(text("CREATE DATABASE other"))
        admin.dispose()
        other = create_engine(make_url(server.url).set(database="other"))
        with other.connect() as connection:
            ALEMBIC.upgrade(connection, CHAIN[0])
        other.dispose()
        engine = create_engine(server.url)
        yield Database(server, engine)
        engine.dispose()


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    yield from migrated_database()


@pytest.fixture(scope="module")
def second_server() -> Iterator[Database]:
    """Another server with the same database at the same revision: only its identity differs."""
    yield from migrated_database()


def container_address(db: Database) -> str:
    return db.server.server_addresses[0]


# --- docker:// ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_container() -> Iterator[Callable[[str], str]]:
    """Starts containers holding the reference backend (mounted, with this interpreter) whose
    environment has the given DATABASE_URL; yields their testinfra spec."""
    require_engine()
    client = docker.from_env()
    volumes = {str(REPO): {"bind": str(REPO), "mode": "ro"}}
    if not sys.base_prefix.startswith("/usr"):  # e.g. pyenv: the venv's interpreter lives there
        volumes[sys.base_prefix] = {"bind": sys.base_prefix, "mode": "ro"}
    started = []

    def start(database_url: str) -> str:
        container = client.containers.run(
            ROOTFS_IMAGE,
            ["sleep", "infinity"],
            detach=True,
            name=f"ledger-rollout-app-{secrets.token_hex(4)}",
            environment={"DATABASE_URL": database_url, "PATH": f"{VENV_BIN}:/usr/bin:/bin"},
            volumes=volumes,
        )
        started.append(container)
        return f"docker://{container.name}"

    yield start
    for container in started:
        container.remove(force=True)
    client.close()


def test_docker_app_reaching_the_same_server_by_its_own_address_passes(
    database: Database, app_container: Callable[[str], str]
) -> None:
    spec = app_container(database.app_url(container_address(database), 5432))
    result = database.check(spec)
    assert result.ok, result.failure
    assert f"app on {spec} sees {container_address(database)}:5432/ledger" in result.summary
    assert database.server.password not in str(result)


def test_docker_app_on_another_database_fails(
    database: Database, app_container: Callable[[str], str]
) -> None:
    spec = app_container(database.app_url(container_address(database), 5432, "other"))
    result = database.check(spec)
    assert result.failure is not None
    assert "the app's $DATABASE_URL reaches database other, the suite checks ledger" in (
        result.failure.seen
    )
    assert f"the app's `alembic current` says {CHAIN[0]}" in result.failure.seen


def test_docker_app_on_another_server_fails(
    database: Database, second_server: Database, app_container: Callable[[str], str]
) -> None:
    """Same database name and revision, same port: only the server's identity differs."""
    spec = app_container(second_server.app_url(container_address(second_server), 5432))
    result = database.check(spec)
    assert result.failure is not None
    seen = result.failure.seen
    assert f"reaches the server at {container_address(second_server)}:5432" in seen
    assert f"the suite reaches the server at {container_address(database)}:5432" in seen
    assert "reaches database" not in seen and "alembic current" not in seen


# --- ssh:// ------------------------------------------------------------------------------


def ssh_tools() -> tuple[str, str]:
    sshd, keygen = "/usr/sbin/sshd", shutil.which("ssh-keygen")
    if not (os.access(sshd, os.X_OK) and keygen and shutil.which("ssh")):
        missing_component("OpenSSH (sshd, ssh, ssh-keygen)", "apt-get install openssh-server")
    if os.geteuid() != 0:
        pytest.skip("a throwaway sshd that logs in as ourselves needs root here")
    return sshd, keygen or ""


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@pytest.fixture
def ssh_app_host(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Starts a throwaway sshd on 127.0.0.1 (its own keys, config and port) whose sessions get
    the given DATABASE_URL; yields the testinfra spec that logs in with a key."""
    sshd, keygen = ssh_tools()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    for key in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / key], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "client_key.pub").read_text())
    (tmp_path / "ssh_config").write_text(
        "StrictHostKeyChecking no\nUserKnownHostsFile /dev/null\nLogLevel ERROR\n"
        "BatchMode yes\nIdentitiesOnly yes\n"
    )
    daemons: list[subprocess.Popen[bytes]] = []

    def start(database_url: str) -> str:
        port = free_port()
        config = tmp_path / f"sshd_config_{port}"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path}/host_key\n"
            f"PidFile none\nAuthorizedKeysFile {tmp_path}/authorized_keys\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\n"
            # The app's environment; HOME keeps this machine's own shell rc files out of it.
            f'SetEnv DATABASE_URL="{database_url}" PATH={VENV_BIN}:/usr/bin:/bin HOME={tmp_path}\n'
        )
        config.chmod(0o600)  # it holds the app's database password
        daemon = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
        daemons.append(daemon)
        deadline = time.monotonic() + 10
        while not listening(port):
            if time.monotonic() > deadline or daemon.poll() is not None:
                pytest.fail(f"sshd did not start: {daemon.communicate(timeout=5)[1]!r}")
            time.sleep(0.05)
        return (
            f"ssh://root@127.0.0.1:{port}?ssh_identity_file={tmp_path}/client_key"
            f"&ssh_config={tmp_path}/ssh_config&timeout=10"
        )

    yield start
    for daemon in daemons:
        daemon.terminate()
        daemon.communicate(timeout=10)


def test_ssh_app_behind_another_name_for_the_server_passes(
    database: Database, ssh_app_host: Callable[[str], str]
) -> None:
    """The app's URL says localhost, the suite's 127.0.0.1: the same server says so."""
    spec = ssh_app_host(database.app_url("localhost", database.server.port))
    result = database.check(spec)
    assert result.ok, result.failure
    assert f"sees localhost:{database.server.port}/ledger" in result.summary


def test_ssh_app_on_another_database_fails(
    database: Database, ssh_app_host: Callable[[str], str]
) -> None:
    spec = ssh_app_host(database.app_url("localhost", database.server.port, "other"))
    result = database.check(spec)
    assert result.failure is not None
    assert "reaches database other, the suite checks ledger" in result.failure.seen


# --- kubectl:// --------------------------------------------------------------------------

# Stands in for kubectl: records its arguments and runs the command meant for the pod here.
KUBECTL = """#!/bin/sh
printf '%s\\n' "$*" | head -n 1 >> "$KUBECTL_LOG"
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""


def test_kubectl_app_host_runs_in_the_pod_and_container_named(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(KUBECTL)
    kubectl.chmod(0o755)
    log = tmp_path / "kubectl.log"
    monkeypatch.setenv("KUBECTL_LOG", str(log))
    monkeypatch.setenv("PATH", f"{tmp_path}:{VENV_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("DATABASE_URL", database.app_url("localhost", database.server.port))
    result = database.check("kubectl://backend-0?namespace=staging&container=api&context=stg")
    assert result.ok, result.failure
    calls = log.read_text().splitlines()
    assert len(calls) == 2  # the server-facts probe and `alembic current`
    assert all(
        call.startswith("--context=stg -n staging -c api exec backend-0 -- /bin/sh -c ")
        for call in calls
    )


def test_a_local_app_sees_only_its_url_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's other secrets (the webhook secret, another database's URL) never reach a
    command run as the app on this machine; the URL variable does, by name."""
    monkeypatch.setenv("LEDGER_WEBHOOK_SECRET", "whsec-never-for-the-app")
    monkeypatch.setenv("OTHER_DATABASE_URL", "postgresql://x:y@elsewhere/db")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@127.0.0.1/ledger")
    rc, output = run_on_app_host("local://", str(tmp_path), "env", "DATABASE_URL")
    assert rc == 0, output
    assert "DATABASE_URL=postgresql://app@127.0.0.1/ledger" in output
    assert "whsec-never-for-the-app" not in output and "LEDGER_WEBHOOK_SECRET" not in output
    assert "OTHER_DATABASE_URL" not in output
