"""Checks on the application host through pytest-testinfra (local://, ssh://, docker://,
kubectl://)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import testinfra
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.processes import interpreter_path
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed

# What identifies a database, read by the suite and by the app over their own connections:
# the database, the server's own address and port (a port-forward or a service DNS name on the
# client's side does not change them) and when its postmaster started. The system identifier
# would be stronger, but pg_control_system() is refused to ordinary roles.
FACTS_SQL = (
    "SELECT current_database(), host(inet_server_addr()), inet_server_port(),"
    " extract(epoch FROM pg_postmaster_start_time())::text"
)
# Runs on the app host with the app's interpreter and the app's ${var}, through SQLAlchemy (the
# app has it: Alembic needs it). Prints one JSON line; never the URL's user or password.
_FACTS_PROBE = """
import json, os, sys
try:
    import sqlalchemy as sa
    url = sa.engine.make_url(os.environ[{var!r}])
    if "+" not in url.drivername:
        try:
            import psycopg
            url = url.set(drivername="postgresql+psycopg")
        except ImportError:
            url = url.set(drivername="postgresql+psycopg2")
    where = f"{{url.host}}:{{url.port or 5432}}/{{url.database}}"
    engine = sa.create_engine(url, hide_parameters=True)
    with engine.connect() as connection:
        facts = list(connection.execute(sa.text({sql!r})).one())
    print(json.dumps({{"url": where, "facts": facts}}))
except Exception as exc:
    print(json.dumps({{"error": f"{{type(exc).__name__}}: {{str(exc).splitlines()[0][:300]}}"}}))
    sys.exit(1)
"""
_REVISION = re.compile(r"^(\S+)(?: \((?:head|mergepoint|branchpoint|effective head)[^)]*\))*$")


@dataclass(frozen=True)
class ServerFacts:
    database: str
    address: str | None  # None over a unix socket
    port: int | None
    started: str  # pg_postmaster_start_time() as epoch seconds

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ServerFacts:
        database, address, port, started = row
        return cls(str(database), address, None if port is None else int(port), str(started))

    def server(self) -> str:
        where = f"{self.address}:{self.port}" if self.address else "a unix socket"
        return f"the server at {where} (postmaster started at epoch {self.started})"

    def describe(self) -> str:
        return f"database {self.database} on {self.server()}"


def read_server_facts(connection: Connection) -> ServerFacts:
    return ServerFacts.from_row(tuple(connection.execute(text(FACTS_SQL)).one()))


# What a command on this machine keeps of the operator's environment, besides the URL
# variable: the rest (webhook secrets, other databases' URLs, tokens) is not the app's.
_APP_ENVIRONMENT = frozenset({"PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM"})
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def run_on_app_host(host_spec: str, app_dir: str, command: str, url_env: str) -> tuple[int, str]:
    """``command`` in ``app_dir`` on the app host. On this machine (local://) it sees only the
    URL variable of the operator's environment (by name: no value reaches a command line)."""
    host = testinfra.get_host(host_spec)
    if host_spec == "local://":
        # The app on this machine is the one installed beside the plugin.
        path = shlex.quote(interpreter_path(os.environ.get("PATH")))
        foreign = sorted(
            name
            for name in os.environ
            if name != url_env
            and name not in _APP_ENVIRONMENT
            and not name.startswith("LC_")
            and _SHELL_NAME.fullmatch(name)
        )
        unset = f"unset {' '.join(foreign)}; " if foreign else ""
        command = f"{unset}PATH={path} {command}"
    result = host.run(f"cd {shlex.quote(app_dir)} && {command}")
    return result.rc, (result.stdout + result.stderr)


def _app_facts(output: str) -> tuple[str, ServerFacts | None, str]:
    """(the app's masked URL, its server facts, its error) from the probe's JSON line."""
    for line in reversed(output.strip().splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            if isinstance(answer, dict):
                facts = answer.get("facts")
                return (
                    str(answer.get("url", "")),
                    ServerFacts.from_row(facts) if facts else None,
                    str(answer.get("error", "")),
                )
    return "", None, output.strip()[-300:] or "(no output)"


def check_app_sees_same_database(
    host_spec: str,
    app_dir: str,
    url_env: str,
    suite: Connection,
    suite_revisions: tuple[str, ...],
    scrubber: Scrubber,
) -> CheckResult:
    """Runbook 1.1 on the app host: the app's Alembic sees the suite's database and revision.

    Both sides ask the server who it is over their own connection: the URLs may differ (a
    port-forward on the operator's side, a service name in the pod) for the same database.
    """
    probe = _FACTS_PROBE.format(var=url_env, sql=FACTS_SQL)
    commands = (f"python -c {shlex.quote(probe)}", "alembic current")
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:  # both only read
        (probe_rc, probe_out), (current_rc, current_out) = pool.map(
            lambda command: run_on_app_host(host_spec, app_dir, command, url_env), commands
        )
    suite_facts = read_server_facts(suite)
    probe_out, current_out = scrubber.scrub(probe_out), scrubber.scrub(current_out)
    app_url, app_facts, app_error = _app_facts(probe_out)
    revisions = tuple(  # only from an answer: a failing `alembic current` prints a traceback
        match.group(1)
        for line in (current_out.splitlines() if current_rc == 0 else ())
        if (match := _REVISION.match(line.strip())) and "[" not in line and ":" not in line
    )
    evidence = Evidence(
        f"on {host_spec} in {app_dir}",
        f"$ python -c '<server facts over ${url_env}>'  (rc={probe_rc})\n"
        f"app: ${url_env} -> {app_url or '(unknown)'}: "
        f"{app_facts.describe() if app_facts else app_error}\n"
        f"suite: {suite_facts.describe()}\n"
        f"$ alembic current  (rc={current_rc})\n{current_out.strip()}",
    )
    problems = []
    if probe_rc != 0 or current_rc != 0:
        problems.append(f"a command failed on the app host (rc {probe_rc}, {current_rc})")
    if app_facts is None:
        problems.append(f"the app could not read its database over ${url_env}: {app_error}")
    else:
        if app_facts.database != suite_facts.database:
            problems.append(
                f"the app's ${url_env} reaches database {app_facts.database}, "
                f"the suite checks {suite_facts.database}"
            )
        if app_facts.server() != suite_facts.server():
            problems.append(
                f"the app's ${url_env} reaches {app_facts.server()}, "
                f"the suite reaches {suite_facts.server()}"
            )
    if revisions != suite_revisions:
        problems.append(
            f"the app's `alembic current` says {', '.join(revisions) or '(empty)'}, "
            f"the suite read {', '.join(suite_revisions) or '(empty)'}"
        )
    if problems:
        return failed(
            Failure(
                "The app's Alembic does not see the database the suite checks",
                expected=(f"{suite_facts.describe()} at {', '.join(suite_revisions) or '(empty)'}"),
                seen="\n".join(problems),
                remedy=(
                    f"Postgres and Alembic must see the same DB (runbook 1.1): compare "
                    f"${url_env} in the app's environment with the suite's, and fix "
                    "[targets.NAME] app_host / app_dir if they point at the wrong pod or folder."
                ),
            ),
            evidence,
        )
    return passed(
        f"app on {host_spec} sees {app_url}: {suite_facts.describe()} at {', '.join(revisions)}",
        evidence,
    )


def check_backfill_dry_run(
    host_spec: str,
    app_dir: str,
    command: str,
    nothing_to_change: str,
    url_env: str,
    scrubber: Scrubber,
) -> CheckResult:
    """Runbook 2.2, from the script's side: its dry run has nothing left to change."""
    rc, output = run_on_app_host(host_spec, app_dir, command, url_env)
    output = scrubber.scrub(output)
    tail = "\n".join(output.strip().splitlines()[-15:])
    evidence = Evidence(f"on {host_spec} in {app_dir}", f"$ {command}  (rc={rc})\n{tail}")
    if rc == 0 and re.search(nothing_to_change, output):
        return passed("backfill dry run: nothing left to change", evidence)
    return failed(
        Failure(
            "The backfill dry run still has work to do"
            if rc == 0
            else f"The backfill dry run failed (exit {rc})",
            expected=f"`{command}` exits 0 and reports nothing to change ({nothing_to_change})",
            seen=tail or "(no output)",
            remedy=(
                "Run the backfill without --dry-run (runbook 2.2), then rerun this phase; "
                "if the dry run keeps finding work, shadow writes are being lost."
            ),
        ),
        evidence,
    )


def check_external_command(
    host_spec: str, workdir: str, command: str, url_env: str, scrubber: Scrubber
) -> CheckResult:
    """A team's own end-to-end step (e.g. the runbook's yarn spec): exit 0, output as evidence."""
    rc, output = run_on_app_host(host_spec, workdir, command, url_env)
    tail = "\n".join(scrubber.scrub(output).strip().splitlines()[-25:])
    evidence = Evidence(f"on {host_spec} in {workdir}", f"$ {command}  (rc={rc})\n{tail}")
    if rc == 0:
        return passed(f"`{command}` passed", evidence)
    return failed(
        Failure(
            f"`{command}` failed (exit {rc})",
            expected="exit 0",
            seen=tail or "(no output)",
            remedy="Read the spec's output above; with enforcement on the flow must be stable.",
        ),
        evidence,
    )
