"""The STG-ROLL suite end to end: the reference service as a process, a real Prometheus
scraping it, the runbook's steps played by the rehearsal; then each seeded fault caught by
the step that owns it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine, text

from pytest_ledger_rollout.config import load_config
from pytest_ledger_rollout.phases.opened_target import ServiceEndpoints
from pytest_ledger_rollout.phases.rehearsal import (
    RehearsalPlan,
    Traffic,
    rehearse_stg_roll,
    wallets_for_traffic,
)
from pytest_ledger_rollout.processes import free_port
from pytest_ledger_rollout.targets.identity import read_identity
from pytest_ledger_rollout.targets.postgres import EphemeralServer

from .support import (
    REFERENCE_BACKEND,
    RELEASE,
    PhaseRun,
    RunPhase,
    ScenarioDb,
    cloned_database,
    flags_restored,
    require_prometheus,
    write_config,
    write_signoff,
)

sys.path.insert(0, str(REFERENCE_BACKEND))  # the service is run from its folder, not installed
from backend.process import start_service
from backend.settings import Fault

WINDOW_S = 5
SECRET_ENV = "ROLL_TEST_WEBHOOK_SECRET"


@dataclass(frozen=True)
class Rehearsed:
    db: ScenarioDb
    endpoints: ServiceEndpoints = field(repr=False)


@pytest.fixture(scope="module")
def rehearsed(
    pg_server: EphemeralServer,
    admin_engine: Engine,
    baseline_template: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rehearsed]:
    """A staging-like database on which the rehearsal played Phase 2, service still running."""
    require_prometheus()
    with (
        cloned_database(admin_engine, baseline_template, pg_server.url, "roll") as db,
        ExitStack() as stack,
    ):
        db.upgrade("head")
        config = load_config(write_config(tmp_path_factory.mktemp("roll"), database=db.name))
        plan = RehearsalPlan(window=timedelta(seconds=WINDOW_S))
        environment = {**os.environ, "DATABASE_URL": db.url}
        endpoints = rehearse_stg_roll(
            config, plan, str(REFERENCE_BACKEND), db.engine, environment, stack
        )
        yield Rehearsed(db, endpoints)


def roll_config(
    folder: Path,
    rehearsed: Rehearsed,
    *,
    prometheus_url: str | None = None,
    watch: str = "",
    extra: str = "",
) -> Path:
    endpoints = rehearsed.endpoints
    return write_config(
        folder,
        database=rehearsed.db.name,
        target_extra=(
            f'service_url = "{endpoints.service_url}"\n'
            f'prometheus_url = "{prometheus_url or endpoints.prometheus_url}"\n'
            f'webhook_secret_env = "{SECRET_ENV}"\n'
        ),
        extra=(
            "[metrics.webhook_401]\n"
            f"before_window_s = {WINDOW_S}\nafter_window_s = {WINDOW_S}\nmin_requests = 20\n"
            + watch
            + extra
        ),
    )


RunRoll = Callable[[Path], PhaseRun]
# Each run's smoke writes through the service; a fault (a flag off, skipped shadow writes)
# leaves wallets off the ledger. Repaired after each test with entries no check counts as a
# backfill, so the next test starts from the rehearsed, consistent state.
REPAIR = (
    "INSERT INTO ledger_entries (wallet_id, tenant_id, amount, entry_type, reference)"
    " SELECT w.id, w.tenant_id, w.balance - coalesce(sum(e.amount), 0), 'withdrawal',"
    " 'test-repair-' || gen_random_uuid() FROM wallets w"
    " LEFT JOIN ledger_entries e ON e.wallet_id = w.id"
    " GROUP BY w.id HAVING w.balance <> coalesce(sum(e.amount), 0)"
)


@pytest.fixture
def run_roll(
    rehearsed: Rehearsed, run_phase: RunPhase, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunRoll]:
    """Run stg-roll against the rehearsed database as a staging target. The flags a test flips
    go back to the rehearsed rows afterwards: 2.3 and 2.4 read their change times."""
    assert rehearsed.endpoints.webhook_secret is not None
    monkeypatch.setenv(SECRET_ENV, rehearsed.endpoints.webhook_secret)

    def run(config: Path) -> PhaseRun:
        with rehearsed.db.engine.connect() as connection:  # the predecessor ran on this database
            identity = read_identity(connection).as_json()
        stg_mig = write_signoff(config.parent / "signed", "stg-mig", identity=identity)
        return run_phase(
            config,
            "--target=staging",
            f"--release={RELEASE}",
            f"--predecessor={stg_mig}",
            url=rehearsed.db.url,
            phase="stg-roll",
        )

    with flags_restored(rehearsed.db):
        yield run
    rehearsed.db.execute(REPAIR)


def outcomes(run: PhaseRun) -> dict[str, str]:
    return {step["id"]: step["outcome"] for step in run.json()["steps"]}


def test_rehearsed_staging_passes(rehearsed: Rehearsed, tmp_path: Path, run_roll: RunRoll) -> None:
    run = run_roll(roll_config(tmp_path, rehearsed))
    assert run.result.ret == 0, run.output
    assert outcomes(run) == dict.fromkeys(("2.0", "2.1", "2.2", "2.3", "2.4"), "passed")


def test_flag_off_fails_2_1(rehearsed: Rehearsed, tmp_path: Path, run_roll: RunRoll) -> None:
    rehearsed.db.execute(
        "UPDATE feature_flags SET enabled = false WHERE key = 'ledger_shadow_write'"
    )
    run = run_roll(roll_config(tmp_path, rehearsed))
    assert outcomes(run)["2.1"] == "failed"
    assert "ledger_shadow_write: off globally" in run.output
    assert run.json()["verdict"] == "FAIL"


def test_flags_out_of_order_fail_2_4(
    rehearsed: Rehearsed, tmp_path: Path, run_roll: RunRoll
) -> None:
    rehearsed.db.execute(
        "UPDATE feature_flags SET changed_at = changed_at + interval '1 hour'"
        " WHERE key = 'ledger_balance_mismatch_log' AND tenant_id IS NULL"
    )
    run = run_roll(roll_config(tmp_path, rehearsed))
    assert outcomes(run)["2.4"] == "failed"
    assert "Flags were flipped out of runbook order" in run.output
    assert "before ledger_balance_mismatch_log" in run.output


def test_prometheus_down_fails_2_3(rehearsed: Rehearsed, tmp_path: Path, run_roll: RunRoll) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    run = run_roll(roll_config(tmp_path, rehearsed, prometheus_url=dead))
    assert outcomes(run) == {
        "2.0": "passed",
        "2.1": "passed",
        "2.2": "passed",
        "2.3": "failed",
        "2.4": "not run",  # its probes passed; the smoke writes only after 2.3 passed
    }
    assert "unreachable" in str(run.step("2.3")["evidence"]).lower() or "refused" in run.output
    smoke = next(
        c
        for c in run.step("2.4")["checks"]
        if c["check"] == "test_withdrawals_smoke_with_enforcement_on"
    )
    assert smoke["summary"] == "not attempted: 2.3 failed"


def test_query_returning_nothing_fails_2_3(
    rehearsed: Rehearsed, tmp_path: Path, run_roll: RunRoll
) -> None:
    nothing = "unauthorized_query = 'sum(increase(ledger_no_such_metric_total[$window]))'\n"
    run = run_roll(roll_config(tmp_path, rehearsed, watch=nothing))
    assert outcomes(run)["2.3"] == "failed"
    assert "no series" in run.output


@pytest.mark.parametrize(
    ("exit_code", "outcome"), [(0, "passed"), (3, "failed")], ids=["spec-passes", "spec-fails"]
)
def test_team_e2e_spec_decides_with_its_exit_code(
    rehearsed: Rehearsed, tmp_path: Path, run_roll: RunRoll, exit_code: int, outcome: str
) -> None:
    """The runbook's yarn spec stands here as a command with a known exit code and output."""
    spec = tmp_path / "spec.py"
    spec.write_text(f"import sys\nprint('withdrawals smoke: 4 steps')\nsys.exit({exit_code})\n")
    smoke = f'[smoke]\nexternal_command = "python {spec}"\nexternal_dir = "{tmp_path}"\n'
    run = run_roll(roll_config(tmp_path, rehearsed, extra=smoke))
    assert outcomes(run)["2.4"] == outcome
    check = next(c for c in run.step("2.4")["checks"] if c["name"].startswith("The team's own"))
    assert check["outcome"] == outcome
    assert f"(rc={exit_code})" in check["evidence"][0]["body"]
    assert "withdrawals smoke: 4 steps" in check["evidence"][0]["body"]


def test_skipped_ledger_write_fails_2_2(
    rehearsed: Rehearsed, tmp_path: Path, run_roll: RunRoll, skipping_service: str
) -> None:
    """A service instance that skips shadow writes: one withdrawal leaves a mismatch."""
    with rehearsed.db.engine.connect() as connection:
        wallet = connection.execute(
            text("SELECT id FROM wallets WHERE owner_ref = 'u-000002' ORDER BY id LIMIT 1")
        ).scalar_one()
    answer = requests.post(
        f"{skipping_service}/wallets/{wallet}/withdrawals", json={"amount": "1.00"}, timeout=10
    )
    assert answer.status_code == 201, answer.text
    run = run_roll(roll_config(tmp_path, rehearsed))
    assert outcomes(run)["2.2"] == "failed"
    assert "1 of 120 wallets differ from the ledger (all tenants)" in run.output
    assert "backfill_wallet_balances --dry-run" in run.output


def test_wrong_webhook_secret_surge_fails_2_3(
    rehearsed: Rehearsed, tmp_path: Path, run_roll: RunRoll
) -> None:
    """Signature enforcement flipped again while a provider signs with a wrong secret."""
    endpoints = rehearsed.endpoints
    assert endpoints.service_url and endpoints.webhook_secret and endpoints.prometheus_url
    wallets = wallets_for_traffic(rehearsed.db.engine)
    flag = f"{endpoints.service_url}/admin/flags/webhook_signature_enforced"
    requests.put(flag, json={"enabled": False}, timeout=10).raise_for_status()
    with Traffic(endpoints.service_url, endpoints.webhook_secret, wallets):
        time.sleep(WINDOW_S)
    with Traffic(endpoints.service_url, "rotated-by-the-provider", wallets, False):
        requests.put(flag, json={"enabled": True}, timeout=10).raise_for_status()
        time.sleep(WINDOW_S + 2.5)
    run = run_roll(roll_config(tmp_path, rehearsed))
    assert outcomes(run)["2.3"] == "failed"
    assert "Turn webhook_signature_enforced off again" in run.output


def test_backfill_not_run_fails_2_2(
    scenario_db: ScenarioDb,
    tmp_path: Path,
    run_phase: RunPhase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGER_WEBHOOK_SECRET", "unused: no smoke runs")
    scenario_db.upgrade("head")
    env = {**os.environ, "DATABASE_URL": scenario_db.url}
    seed = ["--tenants", "2", "--wallets-per-tenant", "5"]
    subprocess.run(
        [sys.executable, "-m", "backend.scripts.seed", *seed],
        cwd=REFERENCE_BACKEND,
        env=env,
        check=True,
        capture_output=True,
    )
    scenario_db.execute(
        "INSERT INTO feature_flags (key, enabled) SELECT unnest(ARRAY['ledger_shadow_write',"
        " 'ledger_balance_mismatch_log', 'webhook_signature_enforced',"
        " 'ledger_enforce_balance']), true"
    )
    config = write_config(tmp_path, database=scenario_db.name)
    run = run_phase(config, "--target=staging", url=scenario_db.url, phase="stg-roll")
    assert outcomes(run)["2.1"] == "passed"
    assert outcomes(run)["2.2"] == "failed"
    assert "10 of 10 wallets differ from the ledger" in run.output
    assert "The backfill dry run still has work to do" in run.output
    assert "Cannot prove enforcement came after the backfill" in run.output


def test_unset_webhook_secret_is_a_usage_error_before_connecting(
    tmp_path: Path, run_phase: RunPhase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGER_WEBHOOK_SECRET", raising=False)
    config = write_config(tmp_path, database="ledger")
    run = run_phase(
        config, "--target=staging", url="postgresql://u@127.0.0.1:1/ledger", phase="stg-roll"
    )
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "phase stg-roll signs webhooks for target 'staging' with the secret in "
        "$LEDGER_WEBHOOK_SECRET, which is unset" in run.output
    )
    assert not run.reports.exists()


@pytest.fixture
def skipping_service(rehearsed: Rehearsed, tmp_path: Path) -> Iterator[str]:
    """A second service instance on the same database, started with shadow writes skipped."""
    faults = [Fault.SKIP_LEDGER_WRITE]
    log = tmp_path / "faulty.log"
    with start_service(
        rehearsed.db.url, webhook_secret="unused", faults=faults, log_path=log
    ) as service:
        yield service.base_url
