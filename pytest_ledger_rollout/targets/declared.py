"""A target as the rollout config declares it, and the database URL it is reached by."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pytest_ledger_rollout.results import CheckResult, Failure, failed
from pytest_ledger_rollout.targets.postgres import EphemeralSettings


@dataclass(frozen=True)
class Expectation:
    host: str | None = None
    database: str | None = None
    # Addresses inet_server_addr() may report when the server sits behind a proxy or pooler.
    server_addr: tuple[str, ...] = ()
    # The cluster's pg_control_system().system_identifier: proves a server reached over a unix
    # socket (where inet_server_addr() is NULL), and any other connection when given.
    system_identifier: str | None = None


@dataclass(frozen=True)
class TargetConfig:
    name: str
    kind: str
    database_url_env: str = "DATABASE_URL"
    expect: Expectation = Expectation()
    app_host: str | None = None  # testinfra host spec, e.g. kubectl://backend-0?namespace=staging
    app_dir: str | None = None
    # URLs may carry a password (user:secret@host): kept out of the repr that tracebacks show.
    service_url: str | None = field(default=None, repr=False)  # the service (STG-ROLL smoke)
    prometheus_url: str | None = field(default=None, repr=False)  # its metrics (2.3, 3.3)
    webhook_secret_env: str = "LEDGER_WEBHOOK_SECRET"  # the smoke signs deposits with it
    ephemeral: EphemeralSettings | None = None  # only for kind = "ephemeral"
    # Refuse the run when the role could write to the ledger or flags tables.
    require_read_only_role: bool = False


def url_port_problem(url: str) -> str | None:
    """Why the port in ``url`` is impossible, or None (no port, or 1..65535)."""
    try:
        port = urlsplit(url).port
    except ValueError as exc:
        return f"invalid URL ({exc}): write a port in 1..65535"
    return "port 0 is not a port: write a port in 1..65535" if port == 0 else None


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


def database_url(target: TargetConfig, environ: Mapping[str, str]) -> URL:
    """The target's database URL from its variable, refused when it cannot be read as one."""
    chosen = target.name
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
    return make_url(url)
