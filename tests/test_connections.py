"""Connections that fail, and URLs that would connect elsewhere: findings, never crashes.

Each run must end with one Expected / Seen / What to do, step 1.1 failed (not "not run"), a
FAIL sign-off, no INTERNALERROR, and no password anywhere."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.targets.identity import ServerIdentity, prove_identity
from pytest_ledger_rollout.targets.postgres import EphemeralServer

from .support import CHAIN, RunPhase, ScenarioDb, write_config

PASSWORD_MARK = "Zq9-never-shown"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def url_with(server_url: str, **parts: Any) -> str:
    return make_url(server_url).set(**parts).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    ("case", "title", "remedy"),
    [
        ("unknown database", "The database does not exist", "Check the database name"),
        ("wrong password", "The server refused the credentials", "percent-encode the password"),
        ("nothing listens", "No server accepts connections there", "that the server is up"),
        ("unknown host", "The host name does not resolve", "Check the host in the URL"),
        ("tls refused", "The TLS (SSL) handshake was refused", "sslmode"),
    ],
)
def test_a_failed_connection_is_a_finding(
    case: str,
    title: str,
    remedy: str,
    pg_server: EphemeralServer,
    scenario_db: ScenarioDb,
    tmp_path: Path,
    run_phase: RunPhase,
) -> None:
    database, host = scenario_db.name, "127.0.0.1"
    url = url_with(scenario_db.url, password=PASSWORD_MARK)  # every case: a marked password
    if case == "unknown database":
        database = "no_such_db"
        url = url_with(pg_server.url, database=database)
    elif case == "wrong password":
        pass
    elif case == "nothing listens":
        url = url_with(url, port=free_port())
    elif case == "unknown host":
        host = "pg-nowhere.invalid"
        url = url_with(url, host=host)
    else:
        url = url_with(scenario_db.url) + "?sslmode=require"
    config = write_config(tmp_path, database=database, host=host)
    run = run_phase(config, "--target=staging", url=url)
    assert run.result.ret == 1, run.output
    assert "INTERNALERROR" not in run.output
    assert f"{title}: the run stopped before any check" in run.output
    assert remedy in run.output
    data = run.json()
    assert data["verdict"] == "FAIL"
    assert run.step("1.1")["outcome"] == "failed"
    assert run.step("1.2")["outcome"] == "not run"
    for artifact in (
        run.output,
        run.artifact(".json").read_text(),
        run.artifact(".html").read_text(),
    ):
        assert PASSWORD_MARK not in artifact
    assert scenario_db.current() == (CHAIN[0],)


@pytest.mark.parametrize(
    ("url_suffix", "netloc", "message"),
    [
        ("", "release:p@ss@127.0.0.1:5432", "holds more than one `@` before the host"),
        ("", "release:pa/ss@127.0.0.1:5432", "an `@` follows a `/`, `?` or `#`"),
        ("", "release:pa#ss@127.0.0.1:5432", "an `@` follows a `/`, `?` or `#`"),
        ("", "release:secret@127.0.0.1:99999", "write a port in 1..65535"),
    ],
)
def test_a_url_that_cannot_be_read_is_a_usage_error(
    tmp_path: Path, run_phase: RunPhase, url_suffix: str, netloc: str, message: str
) -> None:
    config = write_config(tmp_path, database="ledger")
    run = run_phase(config, "--target=staging", url=f"postgresql://{netloc}/ledger{url_suffix}")
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in run.output
    assert "INTERNALERROR" not in run.output
    for secret in ("p@ss", "pa/ss", "pa#ss", "secret"):
        assert secret not in run.output
    assert not run.reports.exists()


def test_query_parameters_that_move_the_connection_are_refused(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    """The URL names the expected host, but ?host= would reach another server over a socket."""
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(
        config, "--target=staging", url=scenario_db.url + "?host=/tmp/elsewhere&port=5433"
    )
    assert run.result.ret == 1
    assert "the URL's query sets host=…" in run.output
    assert "the URL's query sets port=…" in run.output
    assert run.step("1.1")["outcome"] == "failed"
    assert scenario_db.current() == (CHAIN[0],)


def test_pghostaddr_in_the_environment_is_refused(
    scenario_db: ScenarioDb,
    tmp_path: Path,
    run_phase: RunPhase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGHOSTADDR", "127.0.0.2")
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 1
    assert "$PGHOSTADDR is set in the environment" in run.output
    monkeypatch.delenv("PGHOSTADDR")  # this test's own connections must reach the server
    assert scenario_db.current() == (CHAIN[0],)


def test_a_unix_socket_is_proven_by_the_system_identifier_or_refused() -> None:
    url = "postgresql+psycopg://release@pg-staging.internal:5432/ledger"
    over_socket = ServerIdentity("ledger", None, None, "15.8", False, "7312345678901234567")
    refused = prove_identity(url, "pg-staging.internal", "ledger", ("10.0.0.5",), over_socket)
    assert refused.failure is not None
    assert "the connection goes through a unix socket" in refused.failure.seen
    proven = prove_identity(
        url, "pg-staging.internal", "ledger", ("10.0.0.5",), over_socket, "7312345678901234567"
    )
    assert proven.ok, proven.failure
    other = prove_identity(url, "pg-staging.internal", "ledger", ("10.0.0.5",), over_socket, "1111")
    assert other.failure is not None
    assert "system identifier is 7312345678901234567, expected 1111" in other.failure.seen


def test_system_identifier_proves_a_tcp_target_too(
    scenario_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    identifier = scenario_db.scalar("SELECT system_identifier FROM pg_control_system()")
    wrong = write_config(
        tmp_path,
        database=scenario_db.name,
        target_extra="",
    )
    text = wrong.read_text().replace(
        f'expect = {{ host = "127.0.0.1", database = "{scenario_db.name}" }}',
        f'expect = {{ host = "127.0.0.1", database = "{scenario_db.name}", '
        f'system_identifier = "{int(str(identifier)) + 1}" }}',
    )
    wrong.write_text(text)
    run = run_phase(wrong, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 1
    assert f"the server's system identifier is {identifier}" in run.output
    assert scenario_db.current() == (CHAIN[0],)
    wrong.write_text(text.replace(str(int(str(identifier)) + 1), str(identifier)))
    run = run_phase(wrong, "--target=staging", url=scenario_db.url)
    assert run.result.ret == 0, run.output
    assert run.json()["identity"]["system_identifier"] == str(identifier)
