"""The testcontainers provider on a real Docker engine: the locally built Postgres image, the
identity proof by the container's own address, cleanup without Ryuk, and the phases on it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from pytest_ledger_rollout.targets.identity import prove_identity, read_identity
from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    EphemeralUnavailable,
    start_ephemeral,
)
from pytest_ledger_rollout.targets.postgres.containers import NAME_PREFIX, ContainerServer

from .container_engine import LOCAL_POSTGRES_IMAGE, containers_named, require_engine
from .support import REPO, RunPhase

CONTAINER = EphemeralSettings(provider="testcontainers", image=LOCAL_POSTGRES_IMAGE)


@pytest.fixture(scope="module")
def container() -> Iterator[ContainerServer]:
    require_engine()
    with start_ephemeral(CONTAINER) as server:
        assert isinstance(server, ContainerServer)
        yield server


def identity_check(url: str, server: EphemeralServer) -> tuple[bool, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            identity = read_identity(connection)
    finally:
        engine.dispose()
    result = prove_identity(url, server.host, server.database, server.server_addresses, identity)
    return result.ok, result.failure.seen if result.failure else ""


def test_container_is_proven_by_its_own_network_address(container: ContainerServer) -> None:
    assert container.provider == "testcontainers"
    image = re.escape(LOCAL_POSTGRES_IMAGE)
    reason = rf"testcontainers: the Docker engine at \S+ has the image {image}"
    assert re.fullmatch(reason, container.provider_reason)
    assert container.server_addresses and "127.0.0.1" not in container.server_addresses
    assert containers_named(container.name) == [container.name]
    assert container.url.startswith("postgresql+psycopg://rollout:")
    assert container.url.endswith(f"@127.0.0.1:{container.port}/ledger")
    assert identity_check(container.url, container) == (True, "")


def test_another_server_on_loopback_is_refused(
    container: ContainerServer, pg_server: EphemeralServer
) -> None:
    """Seeded fault: a local server at 127.0.0.1 with the same database is not the container."""
    assert pg_server.database == container.database
    ok, seen = identity_check(pg_server.url, container)
    assert not ok
    assert "inet_server_addr() = 127.0.0.1" in seen
    assert ", ".join(container.server_addresses) in seen


def test_another_container_is_refused(container: ContainerServer) -> None:
    with start_ephemeral(CONTAINER) as other:
        assert other.server_addresses != container.server_addresses
        ok, seen = identity_check(other.url, container)
    assert not ok
    assert f"inet_server_addr() = {other.server_addresses[0]}" in seen


def test_auto_needs_the_image_and_says_which_provider_ran() -> None:
    require_engine()
    with start_ephemeral(EphemeralSettings(provider="auto", image=LOCAL_POSTGRES_IMAGE)) as tc:
        assert tc.provider == "testcontainers"
    missing = "ledger-rollout/absent:0"
    with start_ephemeral(EphemeralSettings(provider="auto", image=missing)) as local:
        assert local.provider == "local"
    assert re.fullmatch(
        rf"local: the Docker engine at \S+ has no image {missing} and cannot pull it \(.+\), "
        r"so auto uses local binaries",
        local.provider_reason,
    )
    with pytest.raises(EphemeralUnavailable, match=f"has no image {missing}") as caught:
        start_ephemeral(EphemeralSettings(provider="testcontainers", image=missing))
    assert "build or pull it, or use provider=local" in str(caught.value)


def test_stop_removes_the_container() -> None:
    require_engine()
    with start_ephemeral(CONTAINER) as server:
        assert isinstance(server, ContainerServer)
        assert containers_named(server.name) == [server.name]
    assert containers_named(server.name) == []
    server.stop()  # idempotent


CHILD = """
import time
from pytest_ledger_rollout.targets.postgres import EphemeralSettings, start_ephemeral
server = start_ephemeral(EphemeralSettings(provider="testcontainers", image={image!r}))
print(server.name, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name
)
def test_no_container_survives_its_owner(sig: signal.Signals) -> None:
    """Ryuk is off here: SIGKILL/SIGTERM leave it to the watchdog, SIGINT to atexit."""
    require_engine()
    code = CHILD.format(image=LOCAL_POSTGRES_IMAGE)
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        name = child.stdout.readline().strip()
        if not name:
            pytest.fail(f"child did not start a container: {child.communicate()[1]}")
        assert containers_named(name) == [name]
        child.send_signal(sig)
        child.communicate(timeout=30)
    deadline = time.monotonic() + 15
    while containers_named(name):
        if time.monotonic() > deadline:
            pytest.fail(f"container {name} survived its owner's {signal.Signals(sig).name}")
        time.sleep(0.2)


def container_config(folder: Path) -> Path:
    """The shipped rollout.toml with its ephemeral target on the local image."""
    text = (REPO / "rollout.toml").read_text()
    text = text.replace('"examples/', f'"{REPO}/examples/')
    text = re.sub(r'provider = "auto".*', 'provider = "testcontainers"', text)
    text = re.sub(r'image = ".*"', f'image = "{LOCAL_POSTGRES_IMAGE}"', text)
    path = folder / "rollout.toml"
    path.write_text(text)
    return path


def test_every_phase_passes_on_a_container(run_phase: RunPhase, tmp_path: Path) -> None:
    """stg-mig, then the stg-roll, prd-pilot and prd-ga rehearsals, each on its own container."""
    require_engine()
    config, reports = container_config(tmp_path), tmp_path / "reports"
    before = set(containers_named("ledger-rollout-pg-"))
    for phase in ("stg-mig", "stg-roll", "prd-pilot", "prd-ga"):
        run = run_phase(config, "--target=local", phase=phase, reports=reports)
        assert run.result.ret == 0, run.output
        data = run.json()
        assert data["verdict"] == "PASS", run.output
        assert data["environment"]["ephemeral provider"] == "testcontainers"
    assert set(containers_named("ledger-rollout-pg-")) <= before


def test_a_container_that_does_not_prove_itself_is_refused(
    run_phase: RunPhase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeded fault: the engine reports another address than the server's own."""
    require_engine()
    monkeypatch.setattr(ContainerServer, "server_addresses", property(lambda s: ("192.0.2.1",)))
    run = run_phase(container_config(tmp_path), "--target=local")
    assert run.result.ret != 0
    assert "Connected to the wrong database" in run.output
    assert re.search(r"inet_server_addr\(\) = 172\.\d+\.\d+\.\d+, not .*192\.0\.2\.1", run.output)
    data = run.json()
    assert data["verdict"] == "FAIL"
    assert json.dumps(data).count("192.0.2.1") >= 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_gate_leaves_no_container(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C or a killed pytest while the gate's container starts: none is left."""
    require_engine()
    before = set(containers_named(NAME_PREFIX))
    command = [
        sys.executable, "-m", "pytest", "--phase=stg-mig", "--target=local", "-p",
        "no:cacheprovider", f"--rollout-config={container_config(tmp_path)}",
        f"--signoff-dir={tmp_path / 'reports'}",
    ]  # fmt: skip
    with subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        deadline = time.monotonic() + 60
        while not (started := set(containers_named(NAME_PREFIX)) - before):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the gate started no container"
            time.sleep(0.05)
        process.send_signal(sig)
        output = process.communicate(timeout=60)[0]
    deadline = time.monotonic() + 15
    while left := started & set(containers_named(NAME_PREFIX)):
        assert time.monotonic() < deadline, f"{left} survived {sig.name}:\n{output[-2000:]}"
        time.sleep(0.2)
