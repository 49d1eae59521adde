"""A phase run's pytest hooks (registered by the plugin only when a phase is given): config and
target selection, the safety gate, header, report, verdict.

Thin by design: every decision lives in the domain modules; this file wires them to pytest."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import getpass
import html
import io
import os
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from pytest_ledger_rollout import __version__
from pytest_ledger_rollout.config import ConfigError, load_config
from pytest_ledger_rollout.masking import Scrubber, mask_url
from pytest_ledger_rollout.phases.chain import SigningError, sign_signoff
from pytest_ledger_rollout.phases.model import (
    PHASES,
    ROLE_ORDER,
    TEAM_ROLES,
    Phase,
    Rehearsal,
    Role,
)
from pytest_ledger_rollout.phases.opened_target import (
    TargetRefused,
    open_target,
    resolve_target,
    start_in_background,
)
from pytest_ledger_rollout.phases.provenance import RepositoryState, repository_state
from pytest_ledger_rollout.phases.rehearsal import RehearsalFailed, rehearse
from pytest_ledger_rollout.phases.signoff import (
    NOT_ATTEMPTED,
    CheckRecord,
    RunRecord,
    Verdict,
    place_staged,
    sha256_file,
    signoff_paths,
    staged_html,
    write_checksums,
    write_json,
)
from pytest_ledger_rollout.phases.waivers import SKIP_REASON, WaiverError, load_waivers
from pytest_ledger_rollout.plugin import fixtures
from pytest_ledger_rollout.plugin.options import DOD_MARKER, option, rollout_config_path
from pytest_ledger_rollout.plugin.report import (
    check_counts,
    report_title,
    summary_html,
    terminal_lines,
    verdict_line,
)
from pytest_ledger_rollout.plugin.state import (
    ITEM_EVIDENCE,
    ITEM_PLAN,
    ITEM_SUMMARY,
    RUN_STATE,
    PlannedCheck,
    RunState,
)
from pytest_ledger_rollout.results import DodFailure, Evidence, Failure
from pytest_ledger_rollout.targets.declared import TargetError
from pytest_ledger_rollout.targets.kinds import EPHEMERAL
from pytest_ledger_rollout.targets.postgres import EarlyServer, EphemeralUnavailable
from pytest_ledger_rollout.targets.prometheus_server import PrometheusUnavailable

SUITES_PACKAGE = "pytest_ledger_rollout.suites"


def configure(config: pytest.Config, phase_name: str, early: EarlyServer | None = None) -> None:
    """The phase run from its options (before pytest-html reads --html): its state, the
    sign-off paths, the suite to collect, and the ephemeral target starting meanwhile (on the
    server ``early`` started, when it was started for this target)."""
    # Registered from here, not by the plugin: the fixtures read the run state through the
    # same state module as these hooks even when pytester's inline runs drop lazily imported
    # modules from sys.modules and a suite imports fixtures.py anew.
    config.pluginmanager.register(fixtures, "ledger_rollout.fixtures")
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        raise pytest.UsageError(
            "--phase cannot run under pytest-xdist (-n): the step model runs a phase's checks "
            "in order in one process holding one lock; drop -n for the rollout run"
        )
    state = _configure_run(config, phase_name)
    config.stash[RUN_STATE] = state
    if config.getoption("htmlpath", None) is None and not config.option.collectonly:
        # pytest-html writes to a private path; the report is placed after it, never through
        # a symlink planted at its name.
        state.html_staging = staged_html(state.paths.html)
        config.option.htmlpath = str(state.html_staging)
        config.option.self_contained_html = True
    config.pluginmanager.register(SignoffHtml(state), "ledger_rollout.html")
    # The packaged checks always run; paths given add a team's own checks to them.
    suite = str(_suite_dir(state.phase))
    given = config.args if config.args_source == pytest.Config.ArgsSource.ARGS else []
    config.args = [suite, *(arg for arg in given if arg != suite)]
    if state.target.kind == EPHEMERAL and not config.option.collectonly:
        state.ephemeral_start = start_in_background(
            state.config, state.target, state.phase, state.stack, early
        )
    elif early is not None:
        early.stop()


def _configure_run(config: pytest.Config, phase_name: str) -> RunState:
    phase = PHASES.get(phase_name)
    if phase is None:
        raise pytest.UsageError(f"unknown --phase {phase_name!r}: use one of {', '.join(PHASES)}")
    if not _suite_dir(phase).is_dir():
        raise pytest.UsageError(
            f"phase {phase.name} has no checks in pytest-ledger-rollout {__version__}: "
            "nothing can decide it yet"
        )
    config_path = rollout_config_path(config)
    try:
        rollout = load_config(config_path)
    except ConfigError as exc:
        raise pytest.UsageError(f"invalid rollout config: {exc}") from None
    target_name, _ = option(config, "rollout_target")
    try:
        target = resolve_target(rollout, phase, target_name, os.environ)
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None
    scrubber = Scrubber()
    # URLs of the config that may carry user:password@ besides the database's.
    for url in (
        target.url,
        target.config.service_url,
        target.config.prometheus_url,
        rollout.flags.source.url,
    ):
        scrubber.register_url(url)
    signoff_value, signoff_base = option(config, "rollout_signoff_dir")
    assert signoff_value is not None
    started = dt.datetime.now(dt.UTC)
    folder = (signoff_base / signoff_value).resolve()
    paths = signoff_paths(folder, phase.name, target.name, started)
    record = RunRecord(
        phase=phase,
        target=target.name,
        target_kind=target.kind,
        scrubber=scrubber,
        head=rollout.migrations.expected_chain[-1],
        operator=_operator(),
        started=started,
        repositories=_repositories(rollout.migrations.alembic_ini, config_path),
    )
    record.environment.update(
        {
            "phase": phase.name,
            "target": f"{target.name} ({target.kind})",
            "database": mask_url(target.url) if target.url else "ephemeral (started for this run)",
            "config": f"{config_path.name} sha256:{rollout.sha256[:12]}",
            "alembic head (expected)": rollout.migrations.expected_chain[-1],
            "plugin version": __version__,
            "operator": record.operator,
            "started (UTC)": started.isoformat(timespec="seconds"),
            **{
                f"{name} repository": state.describe() if state else "not a git checkout"
                for name, state in record.repositories.items()
            },
        }
    )
    if os.environ.get("CI_RUN_URL") or os.environ.get("GITHUB_RUN_ID"):
        record.environment["CI run"] = _ci_run_url()
    _load_waivers(config, record, started.date())
    release, _ = option(config, "rollout_release")
    if not release and target.kind != EPHEMERAL:
        raise pytest.UsageError(
            f"target {target.name!r} is a {target.kind} target: its sign-off must name the "
            "release it signs off; pass --release=RC (e.g. --release=2026.11.3) or set "
            "rollout_release in the ini file"
        )
    record.release = release or "rehearsal"
    record.environment["release"] = record.release
    predecessor, predecessor_base = option(config, "rollout_predecessor")
    state = RunState(rollout, phase, target, record, scrubber, paths)
    if predecessor:
        state.predecessor = (predecessor_base / predecessor).resolve()
    candidates, _ = option(config, "rollout_pilot_candidates")
    if candidates is not None:
        if not candidates.isdigit() or int(candidates) < 1:
            raise pytest.UsageError(
                f"--pilot-candidates must be a positive number, not {candidates!r}"
            )
        state.pilot_candidates = int(candidates)
    _require_writable(folder)
    return state


def _repositories(alembic_ini: Path, config_path: Path) -> dict[str, RepositoryState | None]:
    """The checkouts holding the migrations and the config; one entry when they are one."""
    migrations = repository_state(alembic_ini.parent)
    if migrations is not None and config_path.is_relative_to(migrations.root):
        return {"migrations and config": migrations}  # one checkout: git asked once
    return {"migrations": migrations, "config": repository_state(config_path.parent)}


def _require_writable(folder: Path) -> None:
    """The sign-off folder is proven writable before anything touches a database (without
    creating it: a run refused for another reason leaves nothing behind)."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif existing != folder:
        if not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} does not let this user create {folder.name}"
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem is not None:
        raise pytest.UsageError(
            f"the sign-off folder {folder} cannot be written ({problem}): "
            "pass --signoff-dir a folder you can write to"
        )


def _load_waivers(config: pytest.Config, record: RunRecord, today: dt.date) -> None:
    """The waiver file onto the record; its hash goes in the environment, since it changes
    what the verdict means."""
    value, base = option(config, "rollout_waivers")
    if value is None:
        return
    path = (base / value).resolve()
    try:
        record.waivers = load_waivers(path, record.phase, today)
    except WaiverError as exc:
        raise pytest.UsageError(f"invalid waiver file: {exc}") from None
    record.environment["waivers"] = f"{path.name} sha256:{sha256_file(path)[:12]}"


def _suite_dir(phase: Phase) -> Path:
    import importlib

    suites = importlib.import_module(SUITES_PACKAGE)
    return Path(str(suites.__file__)).parent / phase.suite


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _ci_run_url() -> str:
    if os.environ.get("CI_RUN_URL"):
        return os.environ["CI_RUN_URL"]
    server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
    repository = os.environ.get("GITHUB_REPOSITORY", "")
    return f"{server}/{repository}/actions/runs/{os.environ['GITHUB_RUN_ID']}"


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(RUN_STATE, None)
    if state is None:
        return None
    env = state.record.environment
    start = ""
    if state.target.kind == EPHEMERAL:
        revision = state.config.migrations.baseline if state.phase.ephemeral_at_baseline else "head"
        start = f" starts-at={revision}"
    waivers = f" waivers={env['waivers']}" if "waivers" in env else ""
    return state.scrubber.scrub(
        f"ledger-rollout: phase={state.phase.name} target={env['target']} db={env['database']}"
        f"{start} config={env['config']}{waivers} plugin={__version__}"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    state = config.stash.get(RUN_STATE, None)
    if state is None:
        return
    suite = _suite_dir(state.phase).resolve()
    selected, deselected, seen = [], [], set()
    for item in items:
        if item.get_closest_marker(DOD_MARKER) is None or item.nodeid in seen:
            deselected.append(item)
            continue
        seen.add(item.nodeid)
        item.stash[ITEM_PLAN] = _plan(item, state.phase, suite)
        waiver = state.record.waivers.get(item.stash[ITEM_PLAN].step.id)
        if waiver is not None and waiver.skips:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    if not selected:
        raise pytest.UsageError(
            f"phase {state.phase.name} selected no check (after -k/-m and the given paths): "
            "a phase with nothing checked cannot be decided"
        )
    items[:] = _in_model_order(selected, state.phase)


def _plan(item: pytest.Item, phase: Phase, suite: Path) -> PlannedCheck:
    """The item's place in the step model: a packaged check by its function in the phase's
    own suite package, anything else a team's check in the step its marker names."""
    marker = item.get_closest_marker(DOD_MARKER)
    assert marker is not None
    step_id = str(marker.args[0]) if marker.args else ""
    function = getattr(item, "originalname", item.name)
    packaged = phase.packaged(function) if item.path.resolve().is_relative_to(suite) else None
    if packaged is not None:
        step, check = packaged
        if step.id != step_id:
            raise pytest.UsageError(
                f"{item.nodeid} is marked dod({step_id!r}) but the step model of "
                f"{phase.name} has it in step {step.id}"
            )
        return PlannedCheck(step, check.role, check)
    marked = phase.step(step_id)
    if marked is None:
        raise pytest.UsageError(
            f"{item.nodeid} is marked dod({step_id!r}), which is not a step of "
            f"{phase.name} ({', '.join(s.id for s in phase.steps)})"
        )
    role = str(marker.kwargs.get("role", Role.VERIFICATION))
    if role not in TEAM_ROLES:
        raise pytest.UsageError(
            f"{item.nodeid} is marked dod({step_id!r}, role={role!r}): a team's own check "
            f"takes the role {', '.join(TEAM_ROLES)} (actions belong to the packaged suites)"
        )
    return PlannedCheck(marked, Role(role), None)


def _in_model_order(items: list[pytest.Item], phase: Phase) -> list[pytest.Item]:
    """Step by step; within a step probes, pre-flights, actions, verifications; packaged
    checks in their declared order before a team's; whatever order other plugins left."""
    steps = {step.id: index for index, step in enumerate(phase.steps)}

    def position(item: pytest.Item) -> tuple[int, int, int]:
        plan = item.stash[ITEM_PLAN]
        declared = plan.step.checks.index(plan.check) if plan.check else len(plan.step.checks)
        return steps[plan.step.id], ROLE_ORDER[plan.role], declared

    return sorted(items, key=position)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Safety gate: the target is brought up, locked where the phase writes, and its identity
    proven before any check; the checks then run in the model's order, whatever reordered
    them after collection."""
    state = session.config.stash.get(RUN_STATE, None)
    if state is None or session.config.option.collectonly or not session.items:
        return
    session.items[:] = _in_model_order(session.items, state.phase)
    try:
        state.session = open_target(
            state.config,
            state.target,
            state.phase,
            state.scrubber,
            state.stack,
            state.ephemeral_start,
        )
    except EphemeralUnavailable as exc:
        state.record.aborted = f"No ephemeral Postgres could be started: {exc}"
        pytest.exit(state.record.aborted, returncode=pytest.ExitCode.USAGE_ERROR)
    except TargetRefused as refused:
        _refuse(state, refused)
    identity = state.session.identity
    state.record.identity = identity.as_json()
    if state.target.kind == EPHEMERAL and state.phase.rehearsal is not Rehearsal.NONE:
        _rehearse(state)
    state.record.environment.update(
        {
            "database": state.session.masked_url,
            "server version": identity.version,
            "read-only session": "yes" if identity.read_only else "no",
        }
    )
    if state.session.ephemeral is not None:
        ephemeral = state.session.ephemeral
        state.record.environment["ephemeral provider"] = ephemeral.provider
        state.record.environment["ephemeral provider chosen because"] = ephemeral.provider_reason


def _refuse(state: RunState, refused: TargetRefused) -> NoReturn:
    """The target failed a safety precondition: the identity step fails with the cause, the
    run stops, and nothing is read from or written to the database."""
    failure = refused.result.failure
    assert failure is not None
    state.record.aborted = state.scrubber.scrub(str(refused))
    if state.phase.identity_step is not None:
        state.record.add(
            CheckRecord(
                name="Target reached and its identity proven before any check",
                step_id=state.phase.identity_step,
                outcome="failed",
                summary=failure.title,
                failure=failure,
            )
        )
    pytest.exit(
        state.record.aborted + "\nNothing was run against this database.",
        returncode=pytest.ExitCode.TESTS_FAILED,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The step model's gate, before any fixture of the check is set up: a check whose step
    needs an earlier step that did not pass, an action whose pre-flights did not all pass,
    or an action without the phase lock, does not run and says why."""
    state = item.config.stash.get(RUN_STATE, None)
    if state is None or ITEM_PLAN not in item.stash:
        return
    plan = item.stash[ITEM_PLAN]
    reason = state.record.gate(plan.step, plan.role, plan.needs)
    if reason is None and plan.role is Role.ACTION and state.phase.writes:
        assert state.session is not None
        if not state.session.lock_held():
            reason = f"{NOT_ATTEMPTED}: this run no longer holds the phase lock"
    if reason is not None:
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    state = item.config.stash.get(RUN_STATE, None)
    if state is None:
        return report
    finding = _finding(call)
    if finding is not None and report.failed:
        # The finding is the news; a traceback of the plugin's own code is not.
        report.longrepr = str(DodFailure(finding))
    _scrub_report(report, state.scrubber)
    if ITEM_PLAN not in item.stash or not _is_final(report):
        return report
    plan = item.stash[ITEM_PLAN]
    if report.passed:
        outcome = "passed"
    elif report.skipped:
        outcome = "skipped"
    elif (
        call.excinfo is not None
        and call.excinfo.errisinstance(AssertionError)
        and report.when == "call"
    ):
        outcome = "failed"
    else:
        outcome = "error"
    summary = item.stash.get(ITEM_SUMMARY, "")
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2].removeprefix("Skipped: ")
        summary = reason if reason.startswith(NOT_ATTEMPTED) else f"skipped: {reason}"
    elif outcome == "error" and call.excinfo is not None:
        summary = f"error in {report.when}: {call.excinfo.exconly().splitlines()[0][:300]}"
    state.record.add(
        CheckRecord(
            name=_check_title(item),
            step_id=plan.step.id,
            outcome=outcome,
            summary=summary,
            evidence=_item_evidence(item),
            message=report.longreprtext if report.failed else "",
            role=plan.role,
            check=plan.check.name if plan.check else None,
            failure=finding,
        )
    )
    waiver = state.record.waivers.get(plan.step.id)
    if outcome == "failed" and waiver is not None and not waiver.expired:
        # Reported as pytest's expected failure, so a waived failure does not fail the run
        # (exit 0 on PASS); the record above keeps it as a failure for the checklist.
        report.outcome = "skipped"
        report.wasxfail = f"waived: {waiver.describe()}"
    return report


def _finding(call: pytest.CallInfo[None]) -> Failure | None:
    error = call.excinfo.value if call.excinfo is not None else None
    return error.failure if isinstance(error, DodFailure) else None


def _item_evidence(item: pytest.Item) -> list[Evidence]:
    return item.stash[ITEM_EVIDENCE].copy() if ITEM_EVIDENCE in item.stash else []


def _rehearse(state: RunState) -> None:
    """The embedded default of a later phase: play the runbook's steps on the throwaway target."""
    assert state.session is not None
    app_dir = state.target.config.app_dir
    try:
        if state.target.config.app_host != "local://" or not app_dir:
            raise RehearsalFailed(
                f'target {state.target.name} needs app_host = "local://" and an app_dir '
                "holding the service to rehearse with"
            )
        assert state.session.ephemeral is not None
        state.session.services = rehearse(
            state.config, state.phase, app_dir, state.session.engine,
            state.session.ephemeral.url, dict(os.environ), state.stack,
        )  # fmt: skip
    except (RehearsalFailed, PrometheusUnavailable) as exc:
        state.record.aborted = state.scrubber.scrub(f"The rehearsal could not run: {exc}")
        pytest.exit(state.record.aborted, returncode=pytest.ExitCode.TESTS_FAILED)
    services = state.session.services
    state.scrubber.register(services.webhook_secret)
    state.record.environment["rehearsal"] = (
        f"service {services.service_url or '(none)'}, Prometheus {services.prometheus_url}"
        + (f" (history evaluated at {services.evaluate_at:%Y-%m-%d %H:%M} UTC)"
           if services.evaluate_at else "")
    )  # fmt: skip


def _is_final(report: pytest.TestReport) -> bool:
    """The one report per test that decides its outcome."""
    if report.when == "call":
        return True
    return (report.when == "setup" and not report.passed) or (
        report.when == "teardown" and report.failed
    )


def _check_title(item: pytest.Item) -> str:
    doc = getattr(getattr(item, "function", None), "__doc__", None)
    return doc.strip().splitlines()[0] if doc else item.name


def _scrub_report(report: pytest.TestReport, scrubber: Scrubber) -> None:
    if isinstance(report.longrepr, tuple):
        path, line, reason = report.longrepr
        report.longrepr = (path, line, scrubber.scrub(reason))
    elif report.longrepr is not None:
        text = str(report.longrepr)
        cleaned = scrubber.scrub(text)
        if cleaned != text:
            report.longrepr = cleaned
    report.sections = [(title, scrubber.scrub(body)) for title, body in report.sections]


class SignoffHtml:
    """pytest-html hooks, registered only for a phase run (the hooks exist with pytest-html)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def pytest_html_report_title(self, report: Any) -> None:
        report.title = self.state.scrubber.scrub(report_title(self.state.record))

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        prefix.append(summary_html(self.state.record))


_CUT_SHORT = {
    pytest.ExitCode.INTERRUPTED: "interrupted (Ctrl-C or a signal) before every check ran",
    pytest.ExitCode.INTERNAL_ERROR: "stopped by an internal error before every check ran",
}


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    state = session.config.stash.get(RUN_STATE, None)
    if state is None or session.config.option.collectonly:
        return (yield)
    # Before pytest-html renders the sign-off: a run cut short never reads as a verdict.
    record = state.record
    if session.exitstatus in _CUT_SHORT and not record.aborted:
        record.interrupted = _CUT_SHORT[pytest.ExitCode(session.exitstatus)]
    record.finished = dt.datetime.now(dt.UTC)
    assert record.started is not None
    record.environment.update(
        {
            "finished (UTC)": record.finished.isoformat(timespec="seconds"),
            "duration": f"{(record.finished - record.started).total_seconds():.1f} s",
            "checks": check_counts(record.checks),
        }
    )
    result = yield
    if state.html_staging is not None:
        place_staged(state.html_staging, state.paths.html)
    state.paths.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(state.record, state.paths.json)
    write_checksums([state.paths.html, state.paths.json], state.paths.checksums)
    signing_key = state.config.signoff.signing_key
    if signing_key is not None:
        try:
            state.signature = sign_signoff(state.paths.json, signing_key)
        except SigningError as exc:
            # The sign-off stands unsigned and says so; a chain that needs signatures refuses.
            record.aborted = record.aborted or f"The sign-off could not be signed: {exc}"
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if record.verdict() is not Verdict.PASS and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return result


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    state = config.stash.get(RUN_STATE, None)
    if state is None or config.option.collectonly:
        return
    terminalreporter.write_sep("=", "ledger-rollout sign-off")
    for line in terminal_lines(state.record):
        terminalreporter.write_line(line)
    for path in (state.paths.html, state.paths.json, state.paths.checksums, state.signature):
        if path is not None:
            terminalreporter.write_line(f"  {path}")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(RUN_STATE, None)
    if state is None:
        return
    state.stack.close()
    if config.option.collectonly:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"ledger-rollout verdict: {verdict_line(state.record)}", bold=True)
    if config.invocation_params.args == tuple(sys.argv[1:]):
        # The run is this process's own command line, and done: the interpreter's exit would
        # now garbage-collect every object the run and its migrations' application imported
        # (0.5-1 s with MLflow's), only to free memory the exit frees anyway. Objects existing
        # now are left to the exit; atexit handlers still run. Not in an in-process run (a
        # pytester test), where the process goes on.
        gc.freeze()


# --- Secrets and the HTML report: second lines of defence on pytest's own output paths -------


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Before pytest-html reads the environment and before any check: scrub what ``--debug``
    and internal errors show from now on, escape every environment value for the HTML, and
    know the webhook secret from the start (a crash before the target is up must not show it
    either)."""
    state = session.config.stash.get(RUN_STATE, None)
    if state is None:
        return
    state.scrubber.register(os.environ.get(state.target.config.webhook_secret_env) or None)
    session.config.pluginmanager.register(InternalErrorScrubber(state.scrubber))
    tracer = session.config.trace.root
    write = getattr(tracer, "_writer", None)  # pluggy keeps --debug's file writer only there
    if write is not None:
        tracer.setwriter(lambda text: write(state.scrubber.scrub(text)))
        # What pytest wrote before (its header quotes the command line) is scrubbed at the end,
        # after the last hook and before pytest closes the file.
        debug_file = getattr(write, "__self__", None)
        if isinstance(debug_file, io.TextIOWrapper):
            session.config.add_cleanup(lambda: _scrub_open_file(debug_file, state.scrubber))
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    metadata = session.config.stash[metadata_key]
    for key, value in metadata.items():
        metadata[key] = _html_text(value, state.scrubber)


def _scrub_open_file(handle: io.TextIOWrapper, scrubber: Scrubber) -> None:
    handle.flush()
    text = Path(handle.name).read_text(encoding="utf-8")
    handle.seek(0)
    handle.write(scrubber.scrub(text))
    handle.truncate()


def _html_text(value: object, scrubber: Scrubber) -> object:
    """pytest-html puts environment values (and both sides of a dict's items) in the page with
    innerHTML: escaped, a recorded value such as ``<img onerror=...>`` stays text. Scrubbed
    too: pytest-metadata also prints them in the terminal header (-v)."""
    if isinstance(value, dict):
        return {_html_text(k, scrubber): _html_text(v, scrubber) for k, v in value.items()}
    return html.escape(scrubber.scrub(str(value)))


class InternalErrorScrubber:
    """An internal error (the database down at the gate, with ``--showlocals``) shows locals
    of library frames that hold the password in their own spelling (a libpq conninfo, a
    truncated repr): the representation is scrubbed in place before the terminal, junit XML
    or any other plugin renders it."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber

    @pytest.hookimpl(tryfirst=True)
    def pytest_internalerror(self, excrepr: object) -> None:
        _scrub_fields(excrepr, self.scrubber, set())


def _scrub_fields(node: object, scrubber: Scrubber, seen: set[int]) -> object:
    """``node`` with every string in it scrubbed; pytest's repr dataclasses in place."""
    if isinstance(node, str):
        return scrubber.scrub(node)
    if isinstance(node, list | tuple):
        return type(node)(_scrub_fields(item, scrubber, seen) for item in node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type) and id(node) not in seen:
        seen.add(id(node))
        for field in dataclasses.fields(node):
            setattr(node, field.name, _scrub_fields(getattr(node, field.name), scrubber, seen))
    return node
