"""pytest hooks: options, config and target selection, the safety gate, header, report, verdict.

Thin by design: every decision lives in the domain modules; this file wires them to pytest."""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import html
import io
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from . import __version__, fixtures
from .config import ConfigError, load_config
from .evidence import PASS, CheckRecord, RunRecord, sha256_file, write_checksums, write_json
from .masking import Scrubber, mask_url
from .metrics.server import PrometheusUnavailable
from .phases import EPHEMERAL, PHASES, Phase
from .postgres import EphemeralUnavailable
from .rehearsal import RehearsalFailed, RehearsalPlan, rehearse_production, rehearse_stg_roll
from .report import summary_html, terminal_lines, verdict_line
from .results import Evidence
from .session import TargetRefused, open_target_session, start_in_background
from .state import ITEM_EVIDENCE, ITEM_SUMMARY, RUN_STATE, RunState, SignoffPaths
from .targets import TargetError, resolve_target
from .waivers import SKIP_REASON, WaiverError, load_waivers

SUITES_PACKAGE = "pytest_ledger_rollout.suites"
DOD_MARKER = "dod"
PREFLIGHT_MARKER = "preflight"
REHEARSED_PHASES = frozenset({"stg-roll", "prd-pilot", "prd-ga"})  # embedded defaults that
# play the runbook's steps on the throwaway target before the checks

# (option, ini twin, default, help)
_OPTIONS = (
    ("phase", "rollout_phase", None, f"rollout phase to decide: {', '.join(PHASES)}"),
    (
        "target",
        "rollout_target",
        None,
        "target name from the rollout config (default: the ephemeral one)",
    ),
    ("rollout-config", "rollout_config", "rollout.toml", "rollout config file"),
    (
        "signoff-dir",
        "rollout_signoff_dir",
        "reports",
        "folder for the sign-off HTML, JSON and sha256",
    ),
    (
        "waivers",
        "rollout_waivers",
        None,
        "waiver file (YAML): step id -> justification, expiration_date, approver, run",
    ),
    (
        "release",
        "rollout_release",
        None,
        "the release (RC) this run signs off; the phase chain compares it "
        "(ephemeral targets: 'rehearsal')",
    ),
    (
        "predecessor",
        "rollout_predecessor",
        None,
        "the predecessor phase's sign-off JSON (default: the newest in the sign-off folder)",
    ),
    (
        "pilot-candidates",
        "rollout_pilot_candidates",
        None,
        "prd-pilot: also list this many lowest-risk tenants, ranked with their figures",
    ),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ledger-rollout", "ledger rollout definition-of-done gates")
    for name, ini, default, help_text in _OPTIONS:
        group.addoption(
            f"--{name}",
            dest=ini,
            default=None,
            metavar=name.split("-")[-1].upper(),
            help=f"{help_text} (ini: {ini}; default: {default})",
        )
        parser.addini(ini, help_text, default=default)


def _option(config: pytest.Config, ini: str) -> tuple[str | None, Path]:
    """Command line beats ini beats default; paths are relative to where each was given."""
    value = config.getoption(ini)
    if value is not None:
        return str(value), config.invocation_params.dir
    base = config.inipath.parent if config.inipath else config.rootpath
    value = config.getini(ini)
    return (str(value) if value else None), base


@pytest.hookimpl(tryfirst=True)  # before pytest-html reads --html
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{DOD_MARKER}(step_id): the runbook step a definition-of-done check belongs to"
    )
    config.addinivalue_line(
        "markers", f"{PREFLIGHT_MARKER}: a check whose failure stops the destructive step after it"
    )
    config.pluginmanager.register(fixtures, "ledger_rollout.fixtures")
    phase_name, _ = _option(config, "rollout_phase")
    if phase_name is None:
        return
    state = _configure_run(config, phase_name)
    config.stash[RUN_STATE] = state
    if config.getoption("htmlpath", None) is None:
        config.option.htmlpath = str(state.paths.html)
        config.option.self_contained_html = True
    config.pluginmanager.register(SignoffHtml(state), "ledger_rollout.html")
    if not config.args or config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [str(_suite_dir(state.phase))]
    _set_metadata(config, state)
    if state.target.kind == EPHEMERAL and not config.option.collectonly:
        state.ephemeral_start = start_in_background(
            state.config, state.target, state.phase, state.stack
        )


def _configure_run(config: pytest.Config, phase_name: str) -> RunState:
    phase = PHASES.get(phase_name)
    if phase is None:
        raise pytest.UsageError(f"unknown --phase {phase_name!r}: use one of {', '.join(PHASES)}")
    if not _suite_dir(phase).is_dir():
        raise pytest.UsageError(
            f"phase {phase.name} has no checks in pytest-ledger-rollout {__version__}: "
            "nothing can decide it yet"
        )
    config_value, config_base = _option(config, "rollout_config")
    assert config_value is not None
    config_path = (config_base / config_value).resolve()
    try:
        rollout = load_config(config_path)
    except ConfigError as exc:
        raise pytest.UsageError(f"invalid rollout config: {exc}") from None
    target_name, _ = _option(config, "rollout_target")
    try:
        target = resolve_target(rollout, phase, target_name, os.environ)
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None
    scrubber = Scrubber()
    scrubber.register_url(target.url)
    signoff_value, signoff_base = _option(config, "rollout_signoff_dir")
    assert signoff_value is not None
    started = dt.datetime.now(dt.UTC)
    stem = f"{phase.name}-{target.name}-{started:%Y%m%dT%H%M%SZ}"
    folder = (signoff_base / signoff_value).resolve()
    paths = SignoffPaths(
        folder / f"{stem}.html", folder / f"{stem}.json", folder / f"{stem}.sha256"
    )
    record = RunRecord(phase=phase, target=target.name, target_kind=target.kind, scrubber=scrubber)
    record.environment.update(
        {
            "phase": phase.name,
            "target": f"{target.name} ({target.kind})",
            "database": mask_url(target.url) if target.url else "ephemeral (started for this run)",
            "config": f"{config_path.name} sha256:{rollout.sha256[:12]}",
            "alembic head (expected)": rollout.migrations.expected_chain[-1],
            "plugin version": __version__,
            "operator": _operator(),
            "started (UTC)": started.isoformat(timespec="seconds"),
        }
    )
    if os.environ.get("CI_RUN_URL") or os.environ.get("GITHUB_RUN_ID"):
        record.environment["CI run"] = _ci_run_url()
    _load_waivers(config, record, started.date())
    release, _ = _option(config, "rollout_release")
    release = release or ("rehearsal" if target.kind == EPHEMERAL else None)
    if release:
        record.environment["release"] = release
    predecessor, predecessor_base = _option(config, "rollout_predecessor")
    state = RunState(rollout, phase, target, record, scrubber, paths)
    if predecessor:
        state.predecessor = (predecessor_base / predecessor).resolve()
    candidates, _ = _option(config, "rollout_pilot_candidates")
    if candidates is not None:
        if not candidates.isdigit() or int(candidates) < 1:
            raise pytest.UsageError(
                f"--pilot-candidates must be a positive number, not {candidates!r}"
            )
        state.pilot_candidates = int(candidates)
    return state


def _load_waivers(config: pytest.Config, record: RunRecord, today: dt.date) -> None:
    """The waiver file onto the record; its hash goes in the environment, since it changes
    what the verdict means."""
    value, base = _option(config, "rollout_waivers")
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
    return Path(str(suites.__file__)).parent / phase.package


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


def _set_metadata(config: pytest.Config, state: RunState) -> None:
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:  # pytest-metadata absent: the static summary carries the environment
        return
    # Taken by pytest-html when the session starts: an ephemeral database is not known yet
    # (the static sign-off environment in the summary has it).
    known = {
        k: v for k, v in state.record.environment.items() if state.target.url or k != "database"
    }
    config.stash[metadata_key].update({f"ledger-rollout {k}": v for k, v in known.items()})


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
    order = {step.id: index for index, step in enumerate(state.phase.steps)}
    selected, deselected = [], []
    for item in items:
        marker = item.get_closest_marker(DOD_MARKER)
        if marker is None:
            deselected.append(item)
            continue
        step_id = str(marker.args[0]) if marker.args else ""
        if step_id not in order:
            raise pytest.UsageError(
                f"{item.nodeid} is marked dod({step_id!r}), which is not a step of "
                f"{state.phase.name} ({', '.join(order)})"
            )
        waiver = state.record.waivers.get(step_id)
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
    # Runbook order, whatever reordering plugins did; stable within a step.
    items[:] = sorted(selected, key=lambda item: order[_step_of(item)])


def _step_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker(DOD_MARKER)
    assert marker is not None
    return str(marker.args[0])


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Safety gate: the target is brought up and its identity proven before any check."""
    state = session.config.stash.get(RUN_STATE, None)
    if state is None or session.config.option.collectonly or not session.items:
        return
    try:
        state.session = open_target_session(
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
        state.record.aborted = state.scrubber.scrub(str(refused))
        pytest.exit(
            state.record.aborted + "\nNothing was run against this database.",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )
    if state.target.kind == EPHEMERAL and state.phase.name in REHEARSED_PHASES:
        _rehearse(state)
    identity = state.session.identity
    state.record.environment.update(
        {
            "database": state.session.masked_url,
            "server version": identity.version,
            "read-only session": "yes" if identity.read_only else "no",
        }
    )
    if state.session.ephemeral is not None:
        state.record.environment["ephemeral provider"] = state.session.ephemeral.provider


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    state = item.config.stash.get(RUN_STATE, None)
    if state is None:
        return report
    _scrub_report(report, state.scrubber)
    marker = item.get_closest_marker(DOD_MARKER)
    if marker is None or not _is_final(report):
        return report
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
        summary = f"skipped: {report.longrepr[2]}"
    elif outcome == "error" and call.excinfo is not None:
        summary = f"error in {report.when}: {call.excinfo.exconly().splitlines()[0][:300]}"
    state.record.add(
        CheckRecord(
            name=_check_title(item),
            step_id=str(marker.args[0]),
            outcome=outcome,
            summary=summary,
            evidence=_item_evidence(item),
            message=report.longreprtext if report.failed else "",
            preflight=item.get_closest_marker(PREFLIGHT_MARKER) is not None,
        )
    )
    waiver = state.record.waivers.get(str(marker.args[0]))
    if outcome == "failed" and waiver is not None and not waiver.expired:
        # Reported as pytest's expected failure, so a waived failure does not fail the run
        # (exit 0 on PASS); the record above keeps it as a failure for the checklist.
        report.outcome = "skipped"
        report.wasxfail = f"waived: {waiver.describe()}"
    _attach_evidence(report, item)
    return report


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
        if state.phase.read_only:
            assert state.session.ephemeral is not None
            state.session.services = rehearse_production(
                state.config, state.phase, app_dir, state.session.ephemeral.url,
                dict(os.environ), state.stack,
            )  # fmt: skip
        else:
            state.session.services = rehearse_stg_roll(
                state.config, RehearsalPlan(), app_dir, state.session.engine, dict(os.environ),
                state.stack,
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


def _attach_evidence(report: pytest.TestReport, item: pytest.Item) -> None:
    evidence = _item_evidence(item)
    if not evidence:
        return
    try:
        from pytest_html import extras
    except ImportError:
        return
    state = item.config.stash[RUN_STATE]
    body = "\n\n".join(f"## {e.label}\n{e.body}" for e in evidence)
    # pytest-html reads report.extras; pytest's TestReport does not declare it.
    report.extras = [  # type: ignore[attr-defined]
        *getattr(report, "extras", []),
        extras.text(state.scrubber.scrub(body), "evidence"),
    ]


class SignoffHtml:
    """pytest-html hooks, registered only for a phase run (the hooks exist with pytest-html)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def pytest_html_report_title(self, report: Any) -> None:
        report.title = f"Sign-off {self.state.phase.name} on {self.state.target.name}"

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        prefix.append(summary_html(self.state.record))


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    result = yield
    state = session.config.stash.get(RUN_STATE, None)
    if state is None or session.config.option.collectonly:
        return result
    state.paths.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(state.record, state.paths.json)
    write_checksums([state.paths.html, state.paths.json], state.paths.checksums)
    if state.record.verdict() != PASS and session.exitstatus == pytest.ExitCode.OK:
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
    for path in (state.paths.html, state.paths.json, state.paths.checksums):
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
