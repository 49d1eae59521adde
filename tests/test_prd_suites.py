"""PRD-PILOT and PRD-GA on a production-kind target: read-only sessions proven, the phase chain
enforced, and seeded faults caught by the step that owns them. The database and a Prometheus
history are set up by the production rehearsal, then the suites read them as production."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine

from pytest_ledger_rollout.config import load_config
from pytest_ledger_rollout.phases import PHASES
from pytest_ledger_rollout.postgres import EphemeralServer
from pytest_ledger_rollout.rehearsal import rehearse_production
from pytest_ledger_rollout.session import ServiceEndpoints
from pytest_ledger_rollout.targets import read_identity

from .support import (
    REFERENCE_BACKEND,
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
    assert data["decision"] == "HOLD"
    assert "-> HOLD" in run.output
    run = run_prd(run_phase, config, production, "prd-pilot")
    found = outcomes(run)
    assert found["3.0"] == found["3.1"] == found["3.2"] == "passed", run.output
    # Evaluated now, the history (two days back) has no data: never GO.
    assert found["3.3"] == "failed"
    assert run.json()["decision"] == "HOLD"
    assert flag_rows(production) == before


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
    assert run.json()["decision"] == "DRY RUN (would decide HOLD)"
    assert "DRY RUN: would decide HOLD" in run.step("3.3")["evidence"]


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
