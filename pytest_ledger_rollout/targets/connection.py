"""Targets: which database a run is about, how it is connected, and the proof that it is the
right one. Safety policy per kind lives here (read-only production, timeouts, lock waits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed
from pytest_ledger_rollout.targets.kinds import PRODUCTION


def connection_failure(exc: DBAPIError, masked: str, scrubber: Scrubber) -> CheckResult:
    """A failed connection as a finding: what went wrong, in one line, and the fix."""
    message = scrubber.scrub(" ".join(str(exc.orig or exc).split()))
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    lowered = message.lower()
    if sqlstate == "3D000" or "does not exist" in lowered:
        title, remedy = "The database does not exist", "Check the database name in the URL."
    elif sqlstate.startswith("28") or "authentication failed" in lowered:
        title = "The server refused the credentials"
        remedy = (
            "Check the user and password in the URL; percent-encode the password "
            "(`@` is `%40`, `:` is `%3A`, `/` is `%2F`, `%` is `%25`)."
        )
    elif "ssl" in lowered or "tls" in lowered:
        title = "The TLS (SSL) handshake was refused"
        remedy = "Match sslmode in the URL to what the server offers, or fix its certificate."
    elif "timeout" in lowered or "timed out" in lowered:
        title = "The server did not answer in time"
        remedy = "Check that the host is reachable from here (VPN, firewall, port-forward)."
    elif any(
        text in lowered
        for text in ("translate host name", "resolve host", "name or service not known")
    ):
        title = "The host name does not resolve"
        remedy = "Check the host in the URL (and your DNS or VPN)."
    elif "refused" in lowered or "no such file" in lowered or "could not connect" in lowered:
        title = "No server accepts connections there"
        remedy = "Check the host and port in the URL, and that the server is up."
    else:
        title = "The connection to the database failed"
        remedy = "Check the URL and that the server is up and reachable."
    return failed(
        Failure(
            title=f"{title}: the run stopped before any check",
            expected=f"a connection to {masked}",
            seen=message[:600],
            remedy=remedy,
        )
    )


class ReadOnlyViolation(RuntimeError):
    """A production transaction turned out not to be read-only: nothing more is sent."""


def open_engine(url: str | URL, kind: str, phase: str, limits: SessionLimits) -> Engine:
    """Every session gets timeouts and names itself; production sessions are read-only in a
    way their SQL cannot undo.

    ``default_transaction_read_only`` alone is lifted by ``COMMIT; BEGIN READ WRITE`` in one
    string, so a production session also prepares every statement (the extended protocol takes
    one statement per call: a ``;`` cannot start a second) and opens each transaction itself as
    ``READ ONLY``, checking that it is before anything else runs in it."""
    options = [
        f"-c statement_timeout={limits.statement_timeout_ms}",
        f"-c lock_timeout={limits.lock_timeout_ms}",
    ]
    connect_args: dict[str, Any] = {
        "application_name": f"pytest-ledger-rollout/{phase}",
        "connect_timeout": 10,
    }
    if kind == PRODUCTION:
        options.append("-c default_transaction_read_only=on")
        connect_args["prepare_threshold"] = 0  # psycopg: prepare from the first execution
    connect_args["options"] = " ".join(options)
    engine = create_engine(url, pool_pre_ping=False, connect_args=connect_args)
    if kind == PRODUCTION:
        event.listen(engine, "begin", _begin_read_only)
    return engine


def _begin_read_only(connection: Connection) -> None:
    connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    assert_read_only(connection)


def assert_read_only(connection: Connection) -> None:
    """Raise unless the connection's current transaction is read-only."""
    state = connection.exec_driver_sql("SELECT current_setting('transaction_read_only')")
    if state.scalar_one() != "on":
        raise ReadOnlyViolation(
            "the production transaction is not read-only (transaction_read_only = off): "
            "nothing was sent; connect through a role and server that allow read-only sessions"
        )


WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def check_role_privileges(connection: Connection, tables: Sequence[str]) -> CheckResult:
    """Whether the session's role could write to ``tables`` (the ledger's and the flags').

    Read-only sessions hold however the role is granted; a role that cannot write is the
    defence that holds even against a bug in this plugin, so a writable role is reported."""
    rows = connection.execute(
        text(
            "SELECT t.name, string_agg(p.privilege, ', ' ORDER BY p.ord) AS privileges,"
            " to_regclass(t.name) IS NULL AS missing"
            " FROM unnest(CAST(:tables AS text[])) AS t(name)"
            " CROSS JOIN unnest(CAST(:privileges AS text[])) WITH ORDINALITY AS p(privilege, ord)"
            " WHERE to_regclass(t.name) IS NULL"
            "    OR has_table_privilege(to_regclass(t.name), p.privilege)"
            " GROUP BY t.name ORDER BY t.name"
        ),
        {"tables": list(tables), "privileges": list(WRITE_PRIVILEGES)},
    ).all()
    role = connection.execute(text("SELECT current_user")).scalar_one()
    writable = [f"{row.name}: {row.privileges}" for row in rows if not row.missing]
    missing = [row.name for row in rows if row.missing]
    evidence = Evidence(
        "role privileges",
        f"role {role}; write privileges checked: {', '.join(WRITE_PRIVILEGES)} "
        f"on {', '.join(tables)}\n"
        + ("\n".join(writable) if writable else "no write privilege on any of them")
        + (f"\nnot found (not checked): {', '.join(missing)}" if missing else ""),
    )
    if writable:
        return failed(
            Failure(
                f"The role {role} can write to production tables",
                expected=f"no {'/'.join(WRITE_PRIVILEGES)} privilege on {', '.join(tables)}",
                seen="\n".join(writable),
                remedy=(
                    'Connect production targets through a read-only role (README, "Production '
                    'read-only and secrets"): GRANT SELECT only, and REVOKE the write privileges '
                    "listed."
                ),
            ),
            evidence,
        )
    return passed(f"role {role} cannot write to {', '.join(tables)}", evidence)


@dataclass(frozen=True)
class SessionLimits:
    statement_timeout_ms: int = 30_000
    lock_timeout_ms: int = 5_000
    phase_lock_wait_ms: int = 10_000  # how long a second run waits for the phase lock
