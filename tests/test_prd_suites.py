"""PRD-PILOT and PRD-GA on a production-kind target: read-only sessions proven, the phase chain
enforced, and seeded faults caught by the step that owns them. The database and a Prometheus
history are set up by the production rehearsal, then the suites read them as production."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text

from pytest_ledger_rollout.checks.flags import SQL, FlagSourceConfig, read_flags
from pytest_ledger_rollout.checks.metrics.decision import Verdict
from pytest_ledger_rollout.checks.tenant_decision import Ops02Decision, decide_ops02, tenant_flips
from pytest_ledger_rollout.config import load_config
from pytest_ledger_rollout.phases.chain import check_predecessor
from pytest_ledger_rollout.phases.model import PHASES
from pytest_ledger_rollout.phases.opened_target import ServiceEndpoints
from pytest_ledger_rollout.phases.rehearsal import RehearsalFailed, rehearse_production
from pytest_ledger_rollout.phases.signoff import Verdict as SignoffVerdict
from pytest_ledger_rollout.phases.signoff import read_signoff
from pytest_ledger_rollout.targets.identity import read_identity
from pytest_ledger_rollout.targets.postgres import EphemeralServer

from .browser import visible_text
from .loopback_http import LoopbackHTTP, Reply
from .support import (
    HEAD,
    REFERENCE_BACKEND,
    RELEASE,
    PhaseRun,
    RunPhase,
    ScenarioDb,
    cloned_database,
    require_prometheus,
    write_signoff,
)
from .support import write_config as base_config

PILOT = '[pilot]\ntenants = ["t-001"]\ncontrol_tenants = ["t-002", "t-003"]\n'
GA = '[ga]\nwaves = [["t-001"], ["t-002", "t-003"]]\n'


@dataclass(frozen=True)
class Production:
    db: ScenarioDb
    endpoints: ServiceEndpoints = field(repr=False)


@pytest.fixture(scope="module")
def production(
    pg_server: EphemeralServer,
    admin_engine: Engine,
    baseline_template: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Production]:
    """A database in the pilot state (t-001 enforced), with its Prometheus history."""
    require_prometheus()
    with (
        cloned_database(admin_engine, baseline_template, pg_server.url, "prod") as db,
        ExitStack() as stack,
    ):
        db.upgrade("head")
        config = load_config(
            base_config(tmp_path_factory.mktemp("prod"), database=db.name, extra=PILOT + GA)
        )
        endpoints = rehearse_production(
            config, PHASES["prd-pilot"], str(REFERENCE_BACKEND), db.url, dict(os.environ), stack
        )
        yield Production(db, endpoints)


def prod_config(folder: Path, production: Production, extra: str = PILOT + GA) -> Path:
    return base_config(
        folder,
        database=production.db.name,
        kind="production",
        app_dir=None,
        target_extra=f'prometheus_url = "{production.endpoints.prometheus_url}"\n',
        extra=extra,
    )


PREDECESSOR = {"prd-pilot": "stg-roll", "prd-ga": "prd-pilot"}


def run_prd(
    run_phase: RunPhase,
    config: Path,
    production: Production,
    phase: str,
    *extra: str,
    predecessor: bool = True,
) -> PhaseRun:
    """A PRD phase on the production-kind target, by default with a valid predecessor sign-off
    (the chain step must pass before the phase reads anything)."""
    chain: list[str] = []
    if predecessor:
        # A PASS and a GO: what either successor's chain step asks of its predecessor.
        with production.db.engine.connect() as connection:  # prd-pilot ran on this database
            identity = read_identity(connection).as_json()
        signoff = write_signoff(
            config.parent / "predecessor", PREDECESSOR[phase], decision="GO", identity=identity
        )
        chain = [f"--predecessor={signoff}"]
    return run_phase(config, "--target=staging", *chain, *extra, url=production.db.url, phase=phase)


def outcomes(run: PhaseRun) -> dict[str, str]:
    return {step["id"]: step["outcome"] for step in run.json()["steps"]}


def flag_rows(production: Production) -> object:
    return production.db.scalar("SELECT count(*) || ':' || max(changed_at) FROM feature_flags")


def test_pilot_on_production_reads_only_and_needs_its_predecessor(
    production: Production, tmp_path: Path, run_phase: RunPhase
) -> None:
    before = flag_rows(production)
    config = prod_config(tmp_path, production)
    run = run_prd(run_phase, config, production, "prd-pilot", predecessor=False)
    data = run.json()
    assert data["environment"]["read-only session"] == "yes"
    assert flag_rows(production) == before
    found = outcomes(run)
    assert found["3.0"] == "failed"
    assert "No valid stg-roll sign-off" in run.output
    # After a failed chain step the phase reads nothing.
    for step_id in ("3.1", "3.2", "3.3"):
        assert found[step_id] == "not run"
        assert run.step(step_id)["evidence"] == "not attempted: 3.0 failed"
    assert data["decision"] == {"verdict": "HOLD", "dry_run": False}
    assert "-> HOLD" in run.output
    run = run_prd(run_phase, config, production, "prd-pilot")
    found = outcomes(run)
    assert found["3.0"] == found["3.1"] == found["3.2"] == "passed", run.output
    # Evaluated now, the history (two days back) has no data: never GO.
    assert found["3.3"] == "failed"
    assert run.json()["decision"] == {"verdict": "HOLD", "dry_run": False}
    assert flag_rows(production) == before
    # The HOLD as an approver reads it, without scripts: the decision and why, per tenant.
    text = " ".join(visible_text(run.artifact(".html"), scripts=False).split())
    assert "Verdict: FAIL -> decision HOLD" in text
    assert "OPS-02 per pilot tenant" in text and "no data HOLD" in text
    # The per-tenant figures are a table in the JSON and drawn as one on the page.
    (ops02,) = run.step("3.3")["checks"]
    tables = [e for e in ops02["evidence"] if e["table"]]
    assert [e["label"].split(" (")[0] for e in tables] == ["OPS-02 per pilot tenant"]
    assert tables[0]["body"].startswith("tenant\tsignal\tpilot\t")
    page = run.artifact(".html").read_text()
    assert "<table class='ledger-rollout-table'" in page
    assert "<th>ratio (vs control; vs before)</th>" in page


def test_candidates_are_ranked_with_their_figures(
    production: Production, tmp_path: Path, run_phase: RunPhase
) -> None:
    config = prod_config(tmp_path, production)
    run = run_prd(run_phase, config, production, "prd-pilot", "--pilot-candidates=2")
    evidence = run.step("3.1")["checks"][0]["evidence"]
    listing = next(e["body"] for e in evidence if e["label"].startswith("lowest-risk tenants"))
    assert listing.splitlines()[0].startswith("1. t-00") and "40 wallets" in listing
    assert len(listing.splitlines()) == 2


def test_pilot_of_four_tenants_fails_3_1(
    production: Production, tmp_path: Path, run_phase: RunPhase
) -> None:
    four = PILOT.replace('["t-001"]', '["t-001", "t-002", "t-003", "t-004"]', 1)
    run = run_prd(run_phase, prod_config(tmp_path, production, four + GA), production, "prd-pilot")
    assert outcomes(run)["3.1"] == "failed"
    assert "4 pilot tenants" in run.output


def test_non_pilot_tenant_with_enforcement_fails_3_2(
    production: Production, tmp_path: Path, run_phase: RunPhase
) -> None:
    leak = (
        "INSERT INTO feature_flags (key, tenant_id, enabled) VALUES"
        " ('ledger_enforce_balance', 't-003', true)"
    )
    production.db.execute(leak)
    try:
        run = run_prd(run_phase, prod_config(tmp_path, production), production, "prd-pilot")
    finally:
        production.db.execute(
            "DELETE FROM feature_flags WHERE tenant_id = 't-003' AND key = 'ledger_enforce_balance'"
        )
    assert outcomes(run)["3.2"] == "failed"
    assert "t-003" in str(run.step("3.2")["evidence"]) or "t-003" in run.output


def test_dry_run_reports_what_it_would_decide(
    production: Production, tmp_path: Path, run_phase: RunPhase
) -> None:
    dry = PILOT + "dry_run = true\n" + GA
    run = run_prd(run_phase, prod_config(tmp_path, production, dry), production, "prd-pilot")
    assert outcomes(run)["3.3"] == "passed"
    assert run.json()["decision"] == {"verdict": "HOLD", "dry_run": True}
    assert run.json()["environment"]["OPS-02 decision"] == "DRY RUN (would decide HOLD)"
    assert "DRY RUN: would decide HOLD" in run.step("3.3")["evidence"]
    # The next phase reads the pilot's own sign-off typed, and no dry run passes its chain.
    signoff = read_signoff(run.artifact(".json"))
    assert signoff.decision == Ops02Decision(Verdict.HOLD, dry_run=True)
    assert signoff.verdict is SignoffVerdict.PASS
    ga = check_predecessor(
        "prd-ga", signoff_dir=run.reports, head=HEAD, release=RELEASE, rehearsal=False,
        identity=signoff.identity,
    )  # fmt: skip
    assert ga.failure is not None
    assert ga.failure.title == (
        "No valid prd-pilot sign-off: decision is DRY RUN (would decide HOLD), not GO"
    )


TEAM_DECIDES = """
import pytest

from pytest_ledger_rollout.checks.metrics.decision import Verdict
from pytest_ledger_rollout.checks.tenant_decision import Ops02Decision, Ops02Outcome
from pytest_ledger_rollout.results import passed


@pytest.mark.dod("3.3")
def test_team_says_go(recorder):
    recorder.decide(Ops02Outcome(passed("the team's GO"), Ops02Decision(Verdict.GO)))
"""


def test_only_the_deciding_steps_packaged_check_decides(
    production: Production, tmp_path: Path, run_phase: RunPhase
) -> None:
    """A team's own check in 3.3 may not hand the run a decision: it errs, the run holds."""
    team = tmp_path / "test_team_decides.py"
    team.write_text(TEAM_DECIDES)
    dry = PILOT + "dry_run = true\n" + GA
    config = prod_config(tmp_path, production, dry)
    run = run_prd(run_phase, config, production, "prd-pilot", str(team))
    checks = {check["name"]: check for check in run.step("3.3")["checks"]}
    assert checks["test_team_says_go"]["outcome"] == "error"
    assert (
        "test_team_says_go may not decide for prd-pilot" in checks["test_team_says_go"]["summary"]
    )
    # The packaged check decided (a dry run's HOLD); the team's GO reached nothing.
    assert run.json()["decision"] == {"verdict": "HOLD", "dry_run": True}
    assert outcomes(run)["3.3"] == "failed"


def test_ga_with_undeclared_enforcement_fails_4_1(
    production: Production, tmp_path: Path, run_phase: RunPhase
) -> None:
    """The pilot state against GA's waves: t-002 and t-003 are declared but not enforced."""
    run = run_prd(run_phase, prod_config(tmp_path, production), production, "prd-ga")
    found = outcomes(run)
    assert run.json()["environment"]["read-only session"] == "yes"
    assert found["4.0"] == "passed"
    assert found["4.1"] == "failed"
    # t-002 and t-003 have no flag rows of their own: the plan cannot revert them one by one.
    assert found["4.2"] == "failed"
    assert "The rollback plan cannot be applied tenant by tenant" in run.output
    assert found["4.3"] == "failed"  # not in general use


# --- the team's own flag store: an HTTP endpoint, a file, a table with other names -----------

PILOT_STATE_GA = '[ga]\nwaves = [["t-001"]]\nmin_share = 0.3\n'  # 1 of the 3 tenants enforced
LEAK = {"key": "ledger_enforce_balance", "tenant": "t-003", "enabled": True}


@dataclass
class FlagStore:
    """The production flags, copied into another store; ``leak`` turns enforcement on for t-003
    there (and only there: the reference table keeps the pilot state)."""

    config: str
    leak: Callable[[], object]


def _reference_rows(production: Production) -> list[dict[str, object]]:
    with production.db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT key, tenant_id AS tenant, enabled, changed_at FROM feature_flags")
        ).mappings()
        return [{**row, "changed_at": row["changed_at"].isoformat()} for row in rows]


@pytest.fixture(params=["http", "file", "renamed table"])
def flag_store(
    request: pytest.FixtureRequest, production: Production, tmp_path: Path
) -> Iterator[FlagStore]:
    rows = _reference_rows(production)
    if request.param == "http":
        # GET /admin/flags as the reference service answers it: a JSON list of the rows.
        with LoopbackHTTP(
            lambda: Reply(json.dumps(rows), content_type="application/json")
        ) as service:
            config = f'[flags]\nsource = "http"\nurl = "{service.url}/admin/flags"\n'
            yield FlagStore(config, lambda: rows.append(LEAK))
    elif request.param == "file":
        path = tmp_path / "flags.json"
        path.write_text(json.dumps({"flags": rows}))
        yield FlagStore(
            f'[flags]\nsource = "file"\npath = "{path}"\n',
            lambda: path.write_text(json.dumps({"flags": [*rows, LEAK]})),
        )
    else:
        # Other names for every table and column the flag checks read ("on" needs quoting).
        production.db.execute(
            "CREATE TABLE rollout_flags AS SELECT key AS flag, tenant_id AS scope,"
            ' enabled AS "on", changed_at AS at FROM feature_flags',
            "CREATE TABLE clients AS SELECT id AS client FROM tenants",
        )
        config = (
            '[flags]\ntable = "rollout_flags"\nkey_column = "flag"\ntenant_column = "scope"\n'
            'enabled_column = "on"\nchanged_at_column = "at"\n'
            '[tenants]\ntable = "clients"\nid_column = "client"\n'
        )
        leak = (
            'INSERT INTO rollout_flags (flag, scope, "on", at)'
            " VALUES ('ledger_enforce_balance', 't-003', true, now())"
        )
        try:
            yield FlagStore(config, lambda: production.db.execute(leak))
        finally:
            production.db.execute("DROP TABLE rollout_flags", "DROP TABLE clients")


def _run_in(
    folder: Path, production: Production, extra: str, run_phase: RunPhase, phase: str
) -> PhaseRun:
    folder.mkdir()
    return run_prd(run_phase, prod_config(folder, production, extra), production, phase)


GENERAL_USE = "test_enforcement_in_general_use"


def _check_outcome(run: PhaseRun, step_id: str, name: str) -> str:
    checks = {check["check"]: check["outcome"] for check in run.step(step_id)["checks"]}
    return str(checks[name])


def test_pilot_blast_radius_is_decided_from_the_configured_store(
    production: Production, flag_store: FlagStore, tmp_path: Path, run_phase: RunPhase
) -> None:
    before = flag_rows(production)
    extra = PILOT + GA + flag_store.config
    run = _run_in(tmp_path / "pilot", production, extra, run_phase, "prd-pilot")
    assert outcomes(run)["3.2"] == "passed", run.output
    flag_store.leak()
    run = _run_in(tmp_path / "leak", production, extra, run_phase, "prd-pilot")
    assert outcomes(run)["3.2"] == "failed"
    assert "on for 1 tenants outside the pilot: t-003 (tenant row)" in run.output
    assert flag_rows(production) == before  # the reference table decided nothing


def test_ga_waves_are_decided_from_the_configured_store(
    production: Production, flag_store: FlagStore, tmp_path: Path, run_phase: RunPhase
) -> None:
    extra = PILOT + PILOT_STATE_GA + flag_store.config
    run = _run_in(tmp_path / "waves", production, extra, run_phase, "prd-ga")
    found = outcomes(run)
    assert found["4.1"] == found["4.2"] == "passed", run.output
    # 4.3's signals are evaluated now, where the history has no data; its general use passes.
    assert _check_outcome(run, "4.3", GENERAL_USE) == "passed"
    # Declared waves the flags do not show: no tenant rows to revert, not in general use.
    extra = PILOT + GA + flag_store.config
    run = _run_in(tmp_path / "declared", production, extra, run_phase, "prd-ga")
    found = outcomes(run)
    assert found["4.1"] == found["4.2"] == "failed"
    assert _check_outcome(run, "4.3", GENERAL_USE) == "failed"
    flag_store.leak()  # t-003 enforced, in no declared wave
    extra = PILOT + PILOT_STATE_GA + flag_store.config
    run = _run_in(tmp_path / "leak", production, extra, run_phase, "prd-ga")
    assert outcomes(run)["4.1"] == "failed"
    assert "on for 1 tenants in no declared wave: t-003 (tenant row)" in run.output


def test_ops02_flip_times_come_from_the_configured_store(
    production: Production, flag_store: FlagStore, tmp_path: Path
) -> None:
    config = load_config(prod_config(tmp_path, production, PILOT + GA + flag_store.config))
    flags, tenants = config.flags, ["t-001", "t-002", "t-003"]
    keys = (flags.signature_flag, flags.enforce_flag)
    with production.db.engine.connect() as connection:
        flips = tenant_flips(read_flags(flags.source, connection), keys, tenants)
        reference = tenant_flips(read_flags(FlagSourceConfig(SQL), connection), keys, tenants)
    # t-001 flipped its own rows; t-002 and t-003 inherit the global rows' change time.
    assert flips == reference and flips["t-002"] == flips["t-003"] < flips["t-001"]
    outcome = decide_ops02(
        production.endpoints.prometheus_url,
        ["t-001"],
        ["t-002", "t-003"],
        flips,
        config.metrics.decision,
        at=production.endpoints.evaluate_at,
    )
    assert outcome.result.failure is None, outcome.result.failure
    assert outcome.decision == Ops02Decision(Verdict.GO)


@pytest.mark.parametrize(
    "flags",
    [
        '[flags]\nsource = "file"\npath = "flags.json"\n',
        '[flags]\nquery = "SELECT key, tenant_id AS tenant, enabled, changed_at FROM flags_view"\n',
    ],
)
def test_the_production_rehearsal_refuses_a_store_it_cannot_backdate(
    tmp_path: Path, flags: str
) -> None:
    config = load_config(base_config(tmp_path, database="unused", extra=PILOT + flags))
    with ExitStack() as stack, pytest.raises(RehearsalFailed, match="no store it can backdate"):
        rehearse_production(
            config, PHASES["prd-pilot"], str(REFERENCE_BACKEND), "postgresql://unused", {}, stack
        )


def test_a_password_in_the_flag_endpoints_url_reaches_no_output(
    production: Production, tmp_path: Path, run_phase: RunPhase
) -> None:
    """The endpoint answers something that is not a list of flags: the failure names the
    endpoint by host, port and path, never by its user:password."""
    password = "Fp7Hs3Jq@:/?#%Wc5Nt8Lx"
    with LoopbackHTTP(
        lambda: Reply('{"unexpected": true}', content_type="application/json")
    ) as api:
        url = api.url.replace("http://", f"http://ops:{quote(password, safe='')}@")
        config = f'[flags]\nsource = "http"\nurl = "{url}/admin/flags"\n'
        run = _run_in(tmp_path / "run", production, PILOT + GA + config, run_phase, "prd-pilot")
    assert outcomes(run)["3.2"] == "failed", run.output
    assert "expected a list of flags" in run.output
    texts = (run.output, run.artifact(".json").read_text(), run.artifact(".html").read_text())
    for fragment in (password[:6], password[-6:], quote(password, safe="")[:6]):
        assert not any(fragment in text for text in texts), fragment
