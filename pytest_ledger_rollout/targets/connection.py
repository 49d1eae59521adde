"""Targets: which database a run is about, how it is connected, and the proof that it is the
right one. Safety policy per kind lives here (read-only production, timeouts, lock waits)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from pytest_ledger_rollout.checks.flags import SQL
from pytest_ledger_rollout.config import (
    RolloutConfig,
    SessionLimits,
    TargetConfig,
    url_port_problem,
)
from pytest_ledger_rollout.masking import Scrubber, mask_url
from pytest_ledger_rollout.phases.model import EPHEMERAL, PRODUCTION, Phase
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed


class TargetError(ValueError):
    """A usage problem found before connecting: one line with the cause and the fix."""


@dataclass(frozen=True)
class ResolvedTarget:
    config: TargetConfig
    # SQLAlchemy's URL never shows its password (repr, str): not in a traceback's locals, a
    # debug log or a truncated repr. None for an ephemeral target until its server is started.
    url: URL | None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        return self.config.kind


def normalize_url(url: str) -> str:
    """libpq-style URLs name no driver; this plugin speaks psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def resolve_target(
    config: RolloutConfig, phase: Phase, name: str | None, environ: Mapping[str, str]
) -> ResolvedTarget:
    chosen = name or config.default_target()
    if chosen is None:
        raise TargetError(
            f"no --target given and {config.path} declares no ephemeral target: "
            f"pass --target=NAME (one of {', '.join(config.targets)})"
        )
    target = config.targets.get(chosen)
    if target is None:
        raise TargetError(
            f"unknown target {chosen!r}: use one of {', '.join(config.targets)} "
            f"or declare [targets.{chosen}] in {config.path}"
        )
    if target.kind not in phase.allowed_kinds:
        raise TargetError(
            f"phase {phase.name} may not run against {target.kind} target {chosen!r}: "
            f"it runs on {' or '.join(sorted(phase.allowed_kinds))} targets only"
        )
    if target.kind == EPHEMERAL:
        return ResolvedTarget(target, None)
    if phase.signs_webhooks and not environ.get(target.webhook_secret_env):
        raise TargetError(
            f"phase {phase.name} signs webhooks for target {chosen!r} with the secret in "
            f"${target.webhook_secret_env}, which is unset: export {target.webhook_secret_env} "
            f"(or name another variable in [targets.{chosen}] webhook_secret_env)"
        )
    raw = environ.get(target.database_url_env, "")
    if not raw:
        raise TargetError(
            f"target {chosen!r} reads its database URL from ${target.database_url_env}, "
            f"which is unset: export {target.database_url_env}=postgresql://USER@HOST:5432/DB"
        )
    url = normalize_url(raw)
    try:
        backend = make_url(url).get_backend_name()
    except (ArgumentError, ValueError):
        raise TargetError(
            f"${target.database_url_env} is not a database URL "
            f"(expected postgresql://USER:PASSWORD@HOST:PORT/DB)"
        ) from None
    unencoded = _unencoded_userinfo(url)
    if unencoded:
        raise TargetError(
            f"${target.database_url_env} cannot be read as USER:PASSWORD@HOST: {unencoded}; "
            "percent-encode the password (`@` is `%40`, `/` is `%2F`, `?` is `%3F`, "
            "`#` is `%23`, `%` is `%25`, `:` is `%3A`)"
        )
    if problem := url_port_problem(url):
        raise TargetError(f"${target.database_url_env}: {problem}")
    if backend != "postgresql":
        raise TargetError(
            f"${target.database_url_env} points at {backend}, not PostgreSQL: the runbook's checks "
            f"are only valid on Postgres (errors on {backend} are not a reference)"
        )
    return ResolvedTarget(target, make_url(url))


def _unencoded_userinfo(url: str) -> str | None:
    """Why the URL's user:password part looks cut short by an unencoded character, or None.

    The authority ends at the first `/`, `?` or `#`; an `@` after that, or a second `@` in it,
    means a password character was taken for a delimiter."""
    rest = url.split("://", 1)[-1]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, after = rest[:end], rest[end:]
    if authority.count("@") > 1:
        return "it holds more than one `@` before the host"
    if "@" not in authority and "@" in after:
        return "an `@` follows a `/`, `?` or `#` that would end the host"
    return None


# libpq reads connection parameters from a URL's query, where they override the authority.
_OVERRIDING_PARAMS = ("host", "hostaddr", "port", "service", "dbname", "servicefile")
# ... and from the environment, where these override what the URL leaves unsaid.
_OVERRIDING_ENV = ("PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE")


def url_overrides(url: str, environ: Mapping[str, str]) -> CheckResult | None:
    """A refusal when the URL's query or the environment would make libpq connect somewhere
    other than the host, port and database the URL names (and the identity proof checks)."""
    query = make_url(url).query
    params = sorted(name for name in query if name.lower() in _OVERRIDING_PARAMS)
    variables = [name for name in _OVERRIDING_ENV if environ.get(name)]
    if not params and not variables:
        return None
    seen = [f"the URL's query sets {name}=…" for name in params]
    seen += [f"${name} is set in the environment" for name in variables]
    return failed(
        Failure(
            title="The connection would not go where the URL says: the run stopped before "
            "connecting",
            expected="host, port and database named only in the URL's authority and path",
            seen="\n".join(seen) + "\n(libpq lets these override the host the identity proof "
            "checks, e.g. ?host=/other/socket/dir connects to another server)",
            remedy="Remove the query parameters and unset the variables named above; name the "
            "host, port and database in the URL itself.",
        )
    )


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


WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def write_guarded_tables(config: RolloutConfig) -> tuple[str, ...]:
    """The tables a production role must not be able to write: the ledger's, and the flags'
    where they live in the database."""
    source = config.flags.source
    flags = (source.table.table,) if source.kind == SQL else ()
    return (config.ledger.wallets, config.ledger.entries, *flags)


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
