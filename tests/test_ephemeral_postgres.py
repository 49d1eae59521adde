"""Ephemeral PostgreSQL providers, against real servers.

One local server serves the read-only checks; tests about start/stop/crash start their own.
A private template cache makes the first start run initdb and the later ones copy it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import create_engine, text

from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    EphemeralUnavailable,
    containers,
    local,
    start_ephemeral,
)
from pytest_ledger_rollout.targets.postgres.local import LocalServer
from pytest_ledger_rollout.targets.postgres.watchdog import Cluster

LOCAL = EphemeralSettings(provider="local")


def require_binaries() -> None:
    """Missing binaries fail on CI (they are part of its image) and skip elsewhere."""
    try:
        local.find_bindir(LOCAL)
    except EphemeralUnavailable as exc:
        reason = f"PostgreSQL server binaries missing: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def processes_mentioning(path: str) -> list[str]:
    """Independent of the implementation's own scan: any live process naming ``path``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().decode(errors="replace")
            if path in args:
                found.append(args.replace("\0", " "))
    return found


def wait_until_gone(cluster: Cluster, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while processes_mentioning(cluster.tmpdir) or os.path.exists(cluster.tmpdir):
        if time.monotonic() > deadline:
            pytest.fail(
                f"left behind: {processes_mentioning(cluster.tmpdir)}, "
                f"dir exists: {os.path.exists(cluster.tmpdir)}"
            )
        time.sleep(0.05)


def local_cluster(server: EphemeralServer) -> Cluster:
    assert isinstance(server, LocalServer)
    return server.cluster


@pytest.fixture(scope="module")
def template_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("pg-templates")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(local.CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="module")
def server(template_cache: Path) -> Iterator[EphemeralServer]:
    require_binaries()
    with start_ephemeral(LOCAL) as running:
        yield running


@pytest.fixture
def no_docker_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "tc_properties", {})  # no ~/.testcontainers tc.host
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")


def test_local_server_answers_through_sqlalchemy(server: EphemeralServer) -> None:
    assert server.provider == "local"
    assert server.url == (
        f"postgresql+psycopg://rollout:{quote(server.password, safe='')}"
        f"@127.0.0.1:{server.port}/ledger"
    )
    engine = create_engine(server.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
            assert conn.execute(text("select current_database()")).scalar_one() == "ledger"
    finally:
        engine.dispose()


def connect_tcp(server: EphemeralServer, password: str) -> None:
    psycopg.connect(
        host="127.0.0.1",
        port=server.port,
        user=server.user,
        password=password,
        dbname=server.database,
        connect_timeout=5,
    ).close()


def test_tcp_really_requires_the_password(server: EphemeralServer) -> None:
    assert set("@:/%#?&") <= set(server.password)  # exercises the URL quoting
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect_tcp(server, "wrong")
    connect_tcp(server, server.password)


def test_repr_hides_the_password(server: EphemeralServer) -> None:
    assert server.password not in repr(server)
    assert quote(server.password, safe="") not in repr(server)


def test_server_runs_unprivileged_under_root(server: EphemeralServer) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root has to switch users")
    pidfile = Path(local_cluster(server).datadir, "postmaster.pid")
    status = Path(f"/proc/{pidfile.read_text().split()[0]}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert "0" not in uid_line.split()[1:]


def test_stop_leaves_no_process_and_no_files(server: EphemeralServer, template_cache: Path) -> None:
    assert [p.name for p in template_cache.iterdir()] != []  # the module server filled it
    with start_ephemeral(LOCAL) as second:
        cluster = local_cluster(second)
        assert processes_mentioning(cluster.datadir)
    assert not processes_mentioning(cluster.tmpdir)  # postmaster and watchdog gone
    assert not os.path.exists(cluster.tmpdir)
    with pytest.raises(psycopg.OperationalError):
        connect_tcp(second, second.password)
    second.stop()  # idempotent


def test_failed_start_cleans_up(template_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_binaries()
    seen: list[Cluster] = []

    def broken_start(cluster: Cluster) -> int:
        seen.append(cluster)
        raise RuntimeError("pg_ctl start failed (simulated)")

    monkeypatch.setattr(local, "_start_postmaster", broken_start)
    with pytest.raises(RuntimeError, match="simulated"):
        start_ephemeral(LOCAL)
    assert not processes_mentioning(seen[0].tmpdir)
    assert not os.path.exists(seen[0].tmpdir)


CHILD = """
import json, time
from pytest_ledger_rollout.targets.postgres import EphemeralSettings, start_ephemeral
server = start_ephemeral(EphemeralSettings(provider="local"))
c = server.cluster
print(json.dumps([c.bindir, c.tmpdir, c.uid, c.gid]), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name
)
def test_no_server_survives_its_owner(template_cache: Path, sig: signal.Signals) -> None:
    require_binaries()
    # SIGKILL/SIGTERM skip atexit: the watchdog cleans up. SIGINT raises KeyboardInterrupt.
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            pytest.fail(f"child did not start a server: {child.communicate()[1]}")
        bindir, tmpdir, uid, gid = json.loads(line)
        cluster = Cluster(bindir, tmpdir, uid, gid)
        assert processes_mentioning(cluster.datadir)
        child.send_signal(sig)
        child.communicate(timeout=10)
    wait_until_gone(cluster)


def test_auto_without_docker_engine_picks_local_fast(
    template_cache: Path, no_docker_engine: None
) -> None:
    require_binaries()
    started = time.monotonic()
    found = containers.probe(EphemeralSettings().image)
    assert time.monotonic() - started < 1
    assert not found.usable and found.reason.startswith("no Docker engine answers at unix://")
    with start_ephemeral(EphemeralSettings(provider="auto")) as server:
        assert server.provider == "local"
    assert server.provider_reason == f"local: {found.reason}, so auto uses local binaries"


def test_testcontainers_without_engine_says_so(no_docker_engine: None) -> None:
    with pytest.raises(EphemeralUnavailable, match="no Docker engine answers") as caught:
        start_ephemeral(EphemeralSettings(provider="testcontainers"))
    assert "start one (or point DOCKER_HOST at it), or use provider=local" in str(caught.value)


def test_missing_binaries_name_what_to_install(tmp_path: Path, no_docker_engine: None) -> None:
    with pytest.raises(EphemeralUnavailable, match="apt-get install postgresql") as caught:
        start_ephemeral(EphemeralSettings(provider="auto", bindir=str(tmp_path)))
    assert str(tmp_path) in str(caught.value)
    assert "Docker engine" in str(caught.value)


def test_bindir_environment_variable_is_authoritative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(local.BINDIR_ENV, str(tmp_path))
    with pytest.raises(EphemeralUnavailable, match=local.BINDIR_ENV):
        start_ephemeral(LOCAL)


def test_missing_binaries_fail_on_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(local.BINDIR_ENV, str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="binaries missing"):
        require_binaries()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        require_binaries()


def test_unknown_provider_is_rejected() -> None:
    with pytest.raises(ValueError, match="provider must be one of"):
        EphemeralSettings(provider="docker")


class FakePostgresContainer:
    """Stands in for PostgresContainer where no Docker engine runs; fails if told to."""

    failure: Exception | None = None

    def __init__(self, **kwargs: str) -> None:
        self.kwargs = kwargs
        self.stopped = False
        self.name = ""

    def with_name(self, name: str) -> FakePostgresContainer:
        self.name = name
        return self

    def get_container_id(self) -> str:
        return "f" * 64

    def get_wrapped_container(self) -> SimpleNamespace:
        settings = {"IPAddress": "", "Networks": {"bridge": {"IPAddress": "172.17.0.9"}}}
        return SimpleNamespace(reload=lambda: None, attrs={"NetworkSettings": settings})

    def start(self) -> None:
        if self.failure is not None:
            raise self.failure

    def get_container_host_ip(self) -> str:
        return "localhost"

    def get_exposed_port(self, port: int) -> str:
        return "49153"

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> type[FakePostgresContainer]:
    fake = type("Fake", (FakePostgresContainer,), {})
    monkeypatch.setattr(containers, "probe", lambda image: containers.EngineProbe(True, "fake"))
    monkeypatch.setattr(containers, "_postgres_container_class", lambda: fake)
    return fake


def test_testcontainers_server_has_the_local_url_shape(
    fake_engine: type[FakePostgresContainer],
) -> None:
    with start_ephemeral(EphemeralSettings(provider="auto")) as server:
        assert isinstance(server, containers.ContainerServer)
        container = cast(FakePostgresContainer, server.container)
        assert container.kwargs == {
            "image": "postgres:15.8-alpine",
            "username": "rollout",
            "password": server.password,
            "dbname": "ledger",
            "driver": "psycopg",
        }
        assert server.url == (
            f"postgresql+psycopg://rollout:{quote(server.password, safe='')}@127.0.0.1:49153/ledger"
        )
        assert server.server_addresses == ("172.17.0.9",)
        assert container.name == server.name and server.name.startswith("ledger-rollout-pg-")
    assert container.stopped


def test_testcontainers_start_failure_hides_the_password(
    fake_engine: type[FakePostgresContainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(containers, "new_password", lambda: "s3cret@:/%#?&")
    fake_engine.failure = TimeoutError("Command: PGPASSWORD='s3cret@:/%#?&' psql ... timed out")
    with pytest.raises(RuntimeError, match="TimeoutError") as caught:
        start_ephemeral(EphemeralSettings(provider="testcontainers"))
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
