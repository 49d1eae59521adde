"""A phase run's pytest hooks (registered by the plugin only when a phase is given): config and
target selection, the safety gate, header, report, verdict.

Thin by design: every decision lives in the domain modules; this file wires them to pytest."""

from __future__ import annotations

import datetime as dt
import gc
import io
import os
import sys
from collections.abc import Generator
from typing import NoReturn

import pytest

from pytest_ledger_rollout import __version__
from pytest_ledger_rollout.phases.model import (
    Rehearsal,
    Role,
)
from pytest_ledger_rollout.phases.opened_target import (
    TargetRefused,
    open_target,
    start_in_background,
)
from pytest_ledger_rollout.phases.rehearsal import RehearsalFailed, rehearse
from pytest_ledger_rollout.phases.signoff import (
    NOT_ATTEMPTED,
    CheckRecord,
    SigningError,
    Verdict,
    place_staged,
    sign_signoff,
    staged_html,
    write_checksums,
    write_json,
)
from pytest_ledger_rollout.phases.waivers import SKIP_REASON
from pytest_ledger_rollout.plugin import fixtures
from pytest_ledger_rollout.plugin.options import DOD_MARKER
from pytest_ledger_rollout.plugin.ordering import in_model_order, plan_check
from pytest_ledger_rollout.plugin.output_scrubbing import (
    InternalErrorScrubber,
    html_text,
    scrub_open_file,
    scrub_report,
)
from pytest_ledger_rollout.plugin.report import (
    SignoffHtml,
    check_counts,
    terminal_lines,
    verdict_line,
)
from pytest_ledger_rollout.plugin.run_start import new_run_state, suite_dir
from pytest_ledger_rollout.plugin.state import (
    ITEM_EVIDENCE,
    ITEM_HELD_BACK,
    ITEM_PLAN,
    ITEM_SUMMARY,
    RUN_STATE,
    RunState,
)
from pytest_ledger_rollout.results import DodFailure, Evidence, Failure
from pytest_ledger_rollout.targets.kinds import EPHEMERAL
from pytest_ledger_rollout.targets.postgres import EarlyServer, EphemeralUnavailable
from pytest_ledger_rollout.targets.prometheus_server import PrometheusUnavailable


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
    state = new_run_state(config, phase_name)
    config.stash[RUN_STATE] = state
    if config.getoption("htmlpath", None) is None and not config.option.collectonly:
        # pytest-html writes to a private path; the report is placed after it, never through
        # a symlink planted at its name.
        state.html_staging = staged_html(state.paths.html)
        config.option.htmlpath = str(state.html_staging)
        config.option.self_contained_html = True
    config.pluginmanager.register(SignoffHtml(state), "ledger_rollout.html")
    # The packaged checks always run; paths given add a team's own checks to them.
    suite = str(suite_dir(state.phase))
    given = config.args if config.args_source == pytest.Config.ArgsSource.ARGS else []
    config.args = [suite, *(arg for arg in given if arg != suite)]
    if state.target.kind == EPHEMERAL and not config.option.collectonly:
        state.ephemeral_start = start_in_background(
            state.config, state.target, state.phase, state.stack, early
        )
    elif early is not None:
        early.stop()


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
    suite = suite_dir(state.phase).resolve()
    selected, deselected, seen = [], [], set()
    for item in items:
        if item.get_closest_marker(DOD_MARKER) is None or item.nodeid in seen:
            deselected.append(item)
            continue
        seen.add(item.nodeid)
        item.stash[ITEM_PLAN] = plan_check(item, state.phase, suite)
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
    items[:] = in_model_order(selected, state.phase)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Safety gate: the target is brought up, locked where the phase writes, and its identity
    proven before any check; the checks then run in the model's order, whatever reordered
    them after collection."""
    state = session.config.stash.get(RUN_STATE, None)
    if state is None or session.config.option.collectonly or not session.items:
        return
    session.items[:] = in_model_order(session.items, state.phase)
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
        item.stash[ITEM_HELD_BACK] = reason
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
    scrub_report(report, state.scrubber)
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
    if report.skipped and ITEM_HELD_BACK in item.stash:
        summary = item.stash[ITEM_HELD_BACK]
    elif report.skipped and isinstance(report.longrepr, tuple):
        summary = f"skipped: {report.longrepr[2].removeprefix('Skipped: ')}"
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
            session.config.add_cleanup(lambda: scrub_open_file(debug_file, state.scrubber))
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    metadata = session.config.stash[metadata_key]
    for key, value in metadata.items():
        metadata[key] = html_text(value, state.scrubber)
