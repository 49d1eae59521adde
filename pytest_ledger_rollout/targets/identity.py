"""Proof that a connection reached the database the config names: the server's own facts
(address, port, database, cluster identifier) against the expected ones."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, make_url

from pytest_ledger_rollout.masking import mask_url
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed


@dataclass(frozen=True)
class ServerIdentity:
    database: str
    server_addr: str | None  # None over a unix socket
    server_port: int | None
    version: str
    read_only: bool
    system_identifier: str | None = None  # the cluster's, where the role may read it

    def as_json(self) -> dict[str, Any]:
        """What a sign-off records, so that the next phase can prove it ran on the same
        database."""
        return {
            "database": self.database,
            "server_addr": self.server_addr,
            "server_port": self.server_port,
            "system_identifier": self.system_identifier,
        }


def read_identity(connection: Connection) -> ServerIdentity:
    row = connection.execute(
        text(
            "SELECT current_database(), host(inet_server_addr()), inet_server_port(),"
            " current_setting('server_version'), current_setting('transaction_read_only'),"
            # pg_control_system() is for superusers and pg_monitor: NULL, not an error, else.
            " CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')"
            " THEN (SELECT system_identifier::text FROM pg_control_system()) END"
        )
    ).one()
    return ServerIdentity(row[0], row[1], row[2], row[3], row[4] == "on", row[5])


def _addresses(host: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


def prove_identity(
    url: str | URL,
    expected_host: str,
    expected_database: str,
    server_addr: tuple[str, ...],
    identity: ServerIdentity,
    system_identifier: str | None = None,
    *,
    socket_allowed: bool = False,
) -> CheckResult:
    """Host and database from the URL and from the server must match what the config expects.

    Over a unix socket the server shows no address: such a connection is proven only by the
    cluster's system identifier (or allowed for a throwaway server this run started)."""
    parsed = make_url(url)
    url_host = (parsed.host or "").lower()
    problems = []
    if url_host != expected_host.lower():
        problems.append(f"the URL's host is {url_host or '(none)'}, expected {expected_host}")
    if parsed.database != expected_database:
        problems.append(f"the URL's database is {parsed.database}, expected {expected_database}")
    if identity.database != expected_database:
        problems.append(
            f"the server says current_database() = {identity.database}, "
            f"expected {expected_database}"
        )
    allowed = set(server_addr) or _addresses(expected_host)
    if identity.server_addr is not None and identity.server_addr not in allowed:
        problems.append(
            f"the server says inet_server_addr() = {identity.server_addr}, "
            f"not an address of {expected_host} ({', '.join(sorted(allowed)) or 'unresolvable'})"
        )
    if identity.server_addr is None and not (socket_allowed or system_identifier):
        problems.append(
            "the connection goes through a unix socket, where the server shows no address to "
            "prove; set expect.system_identifier to prove it, or connect over TCP"
        )
    if system_identifier is not None and identity.system_identifier != system_identifier:
        problems.append(
            "the server's system identifier is "
            f"{identity.system_identifier or '(not readable by this role)'}, "
            f"expected {system_identifier}"
        )
    evidence = Evidence(
        "identity",
        f"URL (masked): {mask_url(url)}\n"
        f"expected: host={expected_host} database={expected_database}\n"
        f"server: current_database()={identity.database} "
        f"inet_server_addr()={identity.server_addr or '(unix socket)'} "
        f"port={identity.server_port} version={identity.version} "
        f"system_identifier={identity.system_identifier or '(not readable)'}",
    )
    if problems:
        return failed(
            Failure(
                title="Connected to the wrong database: the run stopped before touching it",
                expected=f"host {expected_host}, database {expected_database}",
                seen="\n".join(problems),
                remedy=(
                    "Point the URL variable at the intended database, or correct "
                    "[targets.NAME].expect in the rollout config if the database really moved "
                    "(behind a proxy, list its addresses in expect.server_addr)."
                ),
            ),
            evidence,
        )
    return passed(f"connected to {mask_url(url)} (server {identity.version})", evidence)
