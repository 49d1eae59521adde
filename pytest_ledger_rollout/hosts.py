"""Checks on the application host through pytest-testinfra (local://, ssh://, kubectl://)."""

from __future__ import annotations

import os
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

import testinfra

from .masking import Scrubber, mask_url
from .processes import interpreter_path
from .results import CheckResult, Evidence, Failure, failed, passed

# The runbook's own probe (step 1.1): prints the part of the URL after '@'.
_URL_PROBE = "import os; u=os.getenv({var!r},''); print(u.split('@')[-1] if '@' in u else u)"
_REVISION = re.compile(r"^(\S+)(?: \((?:head|mergepoint|branchpoint|effective head)[^)]*\))*$")


def run_on_app_host(host_spec: str, app_dir: str, command: str) -> tuple[int, str]:
    host = testinfra.get_host(host_spec)
    if host_spec == "local://":
        # The app on this machine is the one installed beside the plugin.
        path = shlex.quote(interpreter_path(os.environ.get("PATH")))
        command = f"PATH={path} {command}"
    result = host.run(f"cd {shlex.quote(app_dir)} && {command}")
    return result.rc, (result.stdout + result.stderr)


def check_app_sees_same_database(
    host_spec: str,
    app_dir: str,
    url_env: str,
    suite_url: str,
    suite_revisions: tuple[str, ...],
    scrubber: Scrubber,
) -> CheckResult:
    """Runbook 1.1 on the app host: the app's Alembic sees the suite's database and revision."""
    commands = (f"python -c {shlex.quote(_URL_PROBE.format(var=url_env))}", "alembic current")
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:  # both only read
        (probe_rc, probe_out), (current_rc, current_out) = pool.map(
            lambda command: run_on_app_host(host_spec, app_dir, command), commands
        )
    probe_out, current_out = scrubber.scrub(probe_out), scrubber.scrub(current_out)
    app_db = _host_db(probe_out.strip().splitlines()[-1] if probe_out.strip() else "")
    revisions = tuple(
        match.group(1)
        for line in current_out.splitlines()
        if (match := _REVISION.match(line.strip())) and "[" not in line and ":" not in line
    )
    suite_db = mask_url(suite_url)
    evidence = Evidence(
        f"on {host_spec} in {app_dir}",
        f"$ python -c '<runbook 1.1 URL probe of ${url_env}>'  (rc={probe_rc})\n{app_db}\n"
        f"$ alembic current  (rc={current_rc})\n{current_out.strip()}",
    )
    problems = []
    if probe_rc != 0 or current_rc != 0:
        problems.append(f"a command failed on the app host (rc {probe_rc}, {current_rc})")
    if app_db != suite_db:
        problems.append(
            f"the app's ${url_env} points at {app_db or '(unset)'}, the suite at {suite_db}"
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
                expected=f"{suite_db} at {', '.join(suite_revisions) or '(empty)'}",
                seen="\n".join(problems),
                remedy=(
                    f"Postgres and Alembic must see the same DB (runbook 1.1): compare "
                    f"${url_env} in the app's environment with the suite's, and fix "
                    "[targets.NAME] app_host / app_dir if they point at the wrong pod or folder."
                ),
            ),
            evidence,
        )
    return passed(f"app on {host_spec} sees {app_db} at {', '.join(revisions)}", evidence)


def _host_db(probe_line: str) -> str:
    """``host:port/db?opts`` (the runbook's probe output) as ``host:port/db``."""
    location = probe_line.split("?", 1)[0].strip()
    return mask_url(f"postgresql://{location}") if location else ""


def check_backfill_dry_run(
    host_spec: str, app_dir: str, command: str, nothing_to_change: str, scrubber: Scrubber
) -> CheckResult:
    """Runbook 2.2, from the script's side: its dry run has nothing left to change."""
    rc, output = run_on_app_host(host_spec, app_dir, command)
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
    host_spec: str, workdir: str, command: str, scrubber: Scrubber
) -> CheckResult:
    """A team's own end-to-end step (e.g. the runbook's yarn spec): exit 0, output as evidence."""
    rc, output = run_on_app_host(host_spec, workdir, command)
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
