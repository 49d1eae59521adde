"""The reference ledger service as a real process (uvicorn on loopback) on a real Postgres at
head, driven over HTTP with requests; its seed and backfill commands run as the runbook runs
them, from examples/reference_backend."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.checks.flags import FlagState, effective
from pytest_ledger_rollout.targets.postgres import EphemeralServer

from .support import (
    REFERENCE_BACKEND,
    ScenarioDb,
    cloned_database,
    flags_restored,
    insert_flag_states,
)

sys.path.insert(0, str(REFERENCE_BACKEND))  # the service is run from its folder, not installed
from backend.flags import KNOWN_FLAGS, flags_for
from backend.process import ServiceProcess, ServiceStartError, start_service
from backend.settings import Fault
from backend.signatures import HEADER, sign

SECRET = "test-webhook-secret"
FLAG_KEYS = {
    "shadow": "ledger_shadow_write",
    "mismatch_log": "ledger_balance_mismatch_log",
    "enforced": "webhook_signature_enforced",
    "enforce": "ledger_enforce_balance",
}
SEED = ("--tenants", "9", "--wallets-per-tenant", "20")


# --- helpers ---------------------------------------------------------------------------------


def run_script(url: str, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m backend.scripts.NAME ...` from the backend's folder, as the runbook does."""
    return subprocess.run(
        [sys.executable, "-m", f"backend.scripts.{name}", *args],
        cwd=REFERENCE_BACKEND,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def libpq_url(url: str) -> str:
    """The URL as operators write it (no driver): the scripts must normalise it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def backfill(db: ScenarioDb, *args: str) -> str:
    done = run_script(libpq_url(db.url), "backfill_wallet_balances", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def mismatched(db: ScenarioDb, tenant: str | None = None) -> int:
    value = db.scalar(
        "SELECT count(*) FROM wallets w WHERE w.balance <> coalesce((SELECT sum(amount)"
        " FROM ledger_entries e WHERE e.wallet_id = w.id), 0)"
        + (f" AND w.tenant_id = '{tenant}'" if tenant else "")
    )
    assert isinstance(value, int)
    return value


class Client:
    def __init__(self, service: ServiceProcess, secret: str = SECRET) -> None:
        self.service, self.secret = service, secret.encode()

    def get(self, path: str) -> requests.Response:
        return requests.get(self.service.url(path), timeout=10)

    def post(self, path: str, payload: dict[str, Any] | None = None) -> requests.Response:
        return requests.post(self.service.url(path), json=payload, timeout=10)

    def flags(self, tenant: str | None, **states: bool) -> None:
        for name, enabled in states.items():
            answer = requests.put(
                self.service.url(f"/admin/flags/{FLAG_KEYS[name]}"),
                json={"enabled": enabled, "tenant": tenant, "changed_by": "tests"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text

    def deposit(
        self,
        tenant: str,
        event_id: str,
        amount: str,
        *,
        wallet: str = "u-000001",
        signature: str | None = "valid",
        provider: str = "acme",
    ) -> requests.Response:
        body = (
            f'{{"event_id": "{event_id}", "tenant": "{tenant}", "owner_ref": "{wallet}",'
            f' "amount": "{amount}"}}'
        ).encode()
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[HEADER] = sign(self.secret, body) if signature == "valid" else signature
        return requests.post(
            self.service.url(f"/webhooks/{provider}/deposits"),
            data=body,
            headers=headers,
            timeout=10,
        )

    def withdraw(self, wallet_id: int, amount: str) -> requests.Response:
        return self.post(f"/wallets/{wallet_id}/withdrawals", {"amount": amount})

    def wallet(self, wallet_id: int) -> dict[str, Any]:
        answer = self.get(f"/wallets/{wallet_id}")
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data

    def balances(self, wallet_id: int) -> tuple[Decimal, Decimal]:
        wallet = self.wallet(wallet_id)
        return Decimal(wallet["legacy_balance"]), Decimal(wallet["ledger_balance"])

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        answer = self.get("/metrics")
        assert answer.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, frozenset(labels.items())))


def wallet_id(db: ScenarioDb, tenant: str, owner_ref: str = "u-000001") -> int:
    value = db.scalar(
        f"SELECT id FROM wallets WHERE tenant_id = '{tenant}' AND owner_ref = '{owner_ref}'"
    )
    assert isinstance(value, int)
    return value


def event() -> str:
    return f"evt-{uuid.uuid4().hex[:12]}"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_db(
    admin_engine: Engine, baseline_template: str, pg_server: EphemeralServer
) -> Iterator[ScenarioDb]:
    """One database at head for the module's service: 9 seeded tenants, each test its own."""
    with cloned_database(admin_engine, baseline_template, pg_server.url, "service") as db:
        db.upgrade("head")
        seeded = run_script(db.url, "seed", *SEED)
        assert seeded.returncode == 0, seeded.stderr
        yield db


@pytest.fixture(scope="module")
def service(
    service_db: ScenarioDb, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("service") / "service.log"
    with start_service(service_db.url, webhook_secret=SECRET, log_path=log) as process:
        yield process  # leaving the block terminates it, whatever the tests did


@pytest.fixture
def client(service: ServiceProcess, service_db: ScenarioDb) -> Iterator[Client]:
    """A client of the module's service. Its flags go back to the seeded ones after each test:
    a test sets every flag it relies on, whichever tests ran before it."""
    with flags_restored(service_db):
        yield Client(service)


StartService = Callable[..., ServiceProcess]


@pytest.fixture
def small_db(scenario_db: ScenarioDb) -> ScenarioDb:
    """A clone at head with 3 tenants x 30 wallets and 2 paid withdrawals per wallet."""
    scenario_db.upgrade("head")
    seeded = run_script(
        libpq_url(scenario_db.url),
        "seed",
        *("--tenants", "3", "--wallets-per-tenant", "30", "--history", "2"),
    )
    assert seeded.returncode == 0, seeded.stderr
    assert "3 tenants, 90 wallets, 180 withdrawals" in seeded.stdout
    return scenario_db


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartService]:
    """Start services for one test; every one is stopped at teardown, pass or fail."""
    started: list[ServiceProcess] = []

    def run(db: ScenarioDb, **options: Any) -> ServiceProcess:
        options.setdefault("webhook_secret", SECRET)
        log = tmp_path / f"service-{len(started)}.log"
        started.append(start_service(db.url, log_path=log, **options))
        return started[-1]

    yield run
    for process in started:
        process.stop()


# --- start-up --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("DATABASE_URL", "DATABASE_URL is not set"),
        ("WEBHOOK_SECRET", "WEBHOOK_SECRET is not set"),
    ],
)
def test_start_fails_clearly_without_its_settings(missing: str, message: str) -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/x", "WEBHOOK_SECRET": "s"}
    del env[missing]
    done = subprocess.run(
        [sys.executable, "-m", "backend.serve", "--port", "1"],
        cwd=REFERENCE_BACKEND,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert message in done.stderr


def test_unreachable_database_fails_start_without_leaking_the_password(tmp_path: Path) -> None:
    url = "postgres://ledger:hunter2-secret@127.0.0.1:1/ledger"
    with pytest.raises(ServiceStartError) as raised:
        start_service(url, webhook_secret=SECRET, log_path=tmp_path / "log", timeout=20)
    assert "cannot reach the ledger database 127.0.0.1:1/ledger" in str(raised.value)
    assert "hunter2" not in (tmp_path / "log").read_text()


def test_service_started_by_the_helper_dies_with_its_parent(scenario_db: ScenarioDb) -> None:
    scenario_db.upgrade("head")
    starter = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from backend.process import start_service;"
        "s = start_service(sys.argv[2], webhook_secret='s');"
        "print(s.base_url, flush=True); time.sleep(60)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", starter, str(REFERENCE_BACKEND), scenario_db.url],
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdout is not None
        base_url = parent.stdout.readline().strip()
        assert requests.get(base_url + "/healthz", timeout=5).status_code == 200
        parent.kill()  # no finalizer runs: only the service's own watch can stop it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            requests.get(base_url + "/healthz", timeout=1)
        except requests.ConnectionError:
            return
        time.sleep(0.2)
    pytest.fail("the service outlived the process that started it")


def test_health_and_metrics_present_at_zero_from_start(
    client: Client, service: ServiceProcess, service_db: ScenarioDb
) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "faults": []}
    tenant = "t-008"  # no other test sends traffic for it
    zero_at_start = [
        ("ledger_balance_mismatch_total", {"tenant": tenant}),
        *(
            ("ledger_webhook_total", {"tenant": tenant, "outcome": outcome})
            for outcome in ("accepted", "duplicate", "rejected_signature", "would_reject")
        ),
        (
            "ledger_http_responses_total",
            {
                "route": "/webhooks/{provider}/deposits",
                "status": "401",
                "code": "WEBHOOK_SIGNATURE_INVALID",
                "tenant": tenant,
            },
        ),
        (
            "ledger_http_responses_total",
            {
                "route": "/wallets/{wallet_id}/withdrawals",
                "status": "400",
                "code": "INSUFFICIENT_FUNDS",
                "tenant": tenant,
            },
        ),
    ]
    for name, labels in zero_at_start:
        assert client.metric(name, **labels) == 0.0, (name, labels)
    # A tenant created after start is there at the next scrape, at 0.
    service_db.execute("INSERT INTO tenants (id, name) VALUES ('t-late', 'late')")
    assert client.metric("ledger_balance_mismatch_total", tenant="t-late") == 0.0
    password = make_url(service_db.url).password
    assert password and password not in service.log()
    assert "database 127.0.0.1:" in service.log()


# --- flags -----------------------------------------------------------------------------------


def test_flags_admin_sets_global_and_tenant_rows_and_keeps_change_times(client: Client) -> None:
    client.flags(None, enforced=True)
    client.flags("t-007", enforced=False)
    rows = {(f["key"], f["tenant"]): f for f in client.get("/admin/flags").json()}
    global_row = rows[("webhook_signature_enforced", None)]
    assert global_row["enabled"] is True and global_row["changed_by"] == "tests"
    assert rows[("webhook_signature_enforced", "t-007")]["enabled"] is False
    # Re-asserting the same state keeps the flip time; a real flip moves it.
    client.flags(None, enforced=True)
    again = next(f for f in client.get("/admin/flags").json() if f["tenant"] is None)
    assert again["changed_at"] == global_row["changed_at"]
    client.flags(None, enforced=False)
    flipped = next(f for f in client.get("/admin/flags").json() if f["tenant"] is None)
    assert flipped["changed_at"] > global_row["changed_at"] and flipped["enabled"] is False

    unknown = requests.put(client.service.url("/admin/flags/nope"), json={"enabled": True})
    assert (unknown.status_code, unknown.json()["code"]) == (400, "UNKNOWN_FLAG")
    no_tenant = requests.put(
        client.service.url("/admin/flags/ledger_shadow_write"),
        json={"enabled": True, "tenant": "t-none"},
    )
    assert (no_tenant.status_code, no_tenant.json()["code"]) == (404, "TENANT_NOT_FOUND")


def test_tenant_override_beats_global_and_missing_is_off(
    client: Client, service_db: ScenarioDb
) -> None:
    # Global on; t-007 overridden off: its bad signature is accepted, t-006's is refused.
    client.flags(None, enforced=True)
    client.flags("t-007", enforced=False)
    assert client.deposit("t-007", event(), "1.00", signature="sha256=00").status_code == 200
    assert client.deposit("t-006", event(), "1.00", signature="sha256=00").status_code == 401
    # No row at all for ledger_enforce_balance for t-006: off, the legacy balance decides.
    assert client.withdraw(wallet_id(service_db, "t-006"), "0.50").status_code == 201


# --- deposits --------------------------------------------------------------------------------


def test_signed_deposit_credits_once_and_a_replay_is_a_duplicate(
    client: Client, service_db: ScenarioDb
) -> None:
    tenant, wid = "t-001", wallet_id(service_db, "t-001")
    client.flags(tenant, shadow=True, mismatch_log=False, enforced=True, enforce=False)
    legacy, ledger = client.balances(wid)
    event_id = event()
    first = client.deposit(tenant, event_id, "25.50")
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False and first.json()["wallet_id"] == wid
    assert client.balances(wid) == (legacy + Decimal("25.50"), ledger + Decimal("25.50"))
    replay = client.deposit(tenant, event_id, "25.50")
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert client.balances(wid) == (legacy + Decimal("25.50"), ledger + Decimal("25.50"))
    # The same event id from another provider is another event.
    assert client.deposit(tenant, event_id, "1.00", provider="other").json()["duplicate"] is False
    assert client.metric("ledger_webhook_total", tenant=tenant, outcome="accepted") == 2.0
    assert client.metric("ledger_webhook_total", tenant=tenant, outcome="duplicate") == 1.0


def test_without_shadow_write_a_deposit_moves_only_the_legacy_balance(
    client: Client, service_db: ScenarioDb
) -> None:
    tenant, wid = "t-009", wallet_id(service_db, "t-009", "u-000002")
    client.flags(tenant, shadow=False, mismatch_log=False, enforced=True, enforce=False)
    legacy, ledger = client.balances(wid)
    assert client.deposit(tenant, event(), "10.00", wallet="u-000002").status_code == 200
    assert client.balances(wid) == (legacy + 10, ledger)


def test_signature_enforced_refuses_with_401_and_off_counts_would_reject(
    client: Client, service_db: ScenarioDb
) -> None:
    tenant, wid = "t-002", wallet_id(service_db, "t-002")
    client.flags(tenant, shadow=True, mismatch_log=False, enforced=True, enforce=False)
    before = client.balances(wid)
    for signature in (None, "sha256=" + "0" * 64, "md5=abc"):
        refused = client.deposit(tenant, event(), "5.00", signature=signature)
        assert refused.status_code == 401
        assert refused.json()["code"] == "WEBHOOK_SIGNATURE_INVALID"
    assert client.balances(wid) == before
    assert client.metric("ledger_webhook_total", tenant=tenant, outcome="rejected_signature") == 3
    refusals = client.metric(
        "ledger_http_responses_total",
        route="/webhooks/{provider}/deposits",
        status="401",
        code="WEBHOOK_SIGNATURE_INVALID",
        tenant=tenant,
    )
    assert refusals == 3.0

    client.flags(tenant, enforced=False)
    accepted = client.deposit(tenant, event(), "5.00", signature="sha256=" + "0" * 64)
    assert accepted.status_code == 200 and accepted.json()["duplicate"] is False
    assert client.balances(wid) == (before[0] + 5, before[1] + 5)
    assert client.metric("ledger_webhook_total", tenant=tenant, outcome="would_reject") == 1.0


def test_invalid_deposits_are_refused_with_codes(client: Client) -> None:
    client.flags("t-002", enforced=False)
    missing_amount = client.post(
        "/webhooks/acme/deposits", {"event_id": "e", "tenant": "t-002", "owner_ref": "u-000001"}
    )
    assert (missing_amount.status_code, missing_amount.json()["code"]) == (422, "INVALID_PAYLOAD")
    unknown_tenant = client.deposit("t-none", event(), "1.00")
    assert (unknown_tenant.status_code, unknown_tenant.json()["code"]) == (
        404,
        "TENANT_NOT_FOUND",
    )
    unknown_wallet = client.deposit("t-002", event(), "1.00", wallet="u-999999")
    assert (unknown_wallet.status_code, unknown_wallet.json()["code"]) == (404, "WALLET_NOT_FOUND")
    negative = client.deposit("t-002", event(), "-1.00")
    assert negative.json()["code"] == "INVALID_PAYLOAD"


# --- withdrawals -----------------------------------------------------------------------------


def test_enforce_balance_lets_the_ledger_decide_else_the_legacy_balance(
    client: Client, service_db: ScenarioDb
) -> None:
    tenant, wid = "t-003", wallet_id(service_db, "t-003")
    client.flags(tenant, shadow=False, mismatch_log=False, enforced=True, enforce=False)
    legacy, ledger = client.balances(wid)
    assert ledger == 0 and legacy > 10  # seeded, not backfilled
    assert client.withdraw(wid, "1.00").status_code == 201  # legacy decides
    over = client.withdraw(wid, str(legacy))
    assert (over.status_code, over.json()["code"]) == (400, "INSUFFICIENT_FUNDS")

    client.flags(tenant, enforce=True)
    short = client.withdraw(wid, "1.00")  # the ledger holds nothing for this wallet
    assert (short.status_code, short.json()["code"]) == (400, "INSUFFICIENT_FUNDS")
    client.flags(tenant, shadow=True)
    assert client.deposit(tenant, event(), "50.00").status_code == 200
    assert client.withdraw(wid, "30.00").status_code == 201
    assert client.withdraw(wid, "30.00").json()["code"] == "INSUFFICIENT_FUNDS"
    assert client.balances(wid)[1] == ledger + 20
    refusals = client.metric(
        "ledger_http_responses_total",
        route="/wallets/{wallet_id}/withdrawals",
        status="400",
        code="INSUFFICIENT_FUNDS",
        tenant=tenant,
    )
    assert refusals == 3.0


def test_withdraw_approve_mark_paid_and_reject(client: Client, service_db: ScenarioDb) -> None:
    tenant, wid = "t-004", wallet_id(service_db, "t-004")
    client.flags(tenant, shadow=True, mismatch_log=True, enforced=True, enforce=True)
    backfill(service_db, "--tenant", tenant)
    legacy, ledger = client.balances(wid)
    assert legacy == ledger

    requested = client.withdraw(wid, "12.34")
    assert requested.status_code == 201
    withdrawal = requested.json()
    assert (withdrawal["status"], withdrawal["amount"], withdrawal["tenant"]) == (
        "requested",
        "12.34",
        tenant,
    )
    assert client.balances(wid) == (legacy - Decimal("12.34"), ledger - Decimal("12.34"))
    admin = f"/admin/withdrawals/{withdrawal['id']}"
    assert client.post(f"{admin}/mark-paid").json()["code"] == "WITHDRAWAL_STATE_CONFLICT"
    assert client.post(f"{admin}/approve").json()["status"] == "approved"
    twice = client.post(f"{admin}/approve")
    assert (twice.status_code, twice.json()["code"]) == (409, "WITHDRAWAL_STATE_CONFLICT")
    assert client.post(f"{admin}/mark-paid").json()["status"] == "paid"
    conflicts = client.metric(
        "ledger_http_responses_total",
        route="/admin/withdrawals/{withdrawal_id}/approve",
        status="409",
        code="WITHDRAWAL_STATE_CONFLICT",
        tenant=tenant,
    )
    assert conflicts == 1.0
    assert client.post(f"{admin}/reject").status_code == 409  # paid money is gone
    assert client.balances(wid) == (legacy - Decimal("12.34"), ledger - Decimal("12.34"))

    other = client.withdraw(wid, "5.00").json()
    rejected = client.post(f"/admin/withdrawals/{other['id']}/reject")
    assert rejected.json()["status"] == "rejected"
    assert client.balances(wid) == (legacy - Decimal("12.34"), ledger - Decimal("12.34"))
    assert client.post("/admin/withdrawals/999999/approve").json()["code"] == (
        "WITHDRAWAL_NOT_FOUND"
    )
    assert client.get("/wallets/999999").json()["code"] == "WALLET_NOT_FOUND"
    assert mismatched(service_db, tenant) == 0
    assert client.metric("ledger_balance_mismatch_total", tenant=tenant) == 0.0


@pytest.mark.parametrize("enforce", [False, True], ids=["legacy-decides", "ledger-decides"])
def test_concurrent_withdrawals_never_overdraw(
    client: Client, service_db: ScenarioDb, enforce: bool
) -> None:
    tenant = "t-005"
    wid = wallet_id(service_db, tenant, "u-000003" if enforce else "u-000004")
    client.flags(tenant, shadow=True, mismatch_log=False, enforced=True, enforce=enforce)
    backfill(service_db, "--tenant", tenant)
    legacy, _ = client.balances(wid)
    # Each asks for just over a third: exactly two fit, however the requests interleave.
    amount = (legacy / 3).quantize(Decimal("0.01"), rounding="ROUND_DOWN") + Decimal("0.01")
    gate = threading.Barrier(8)
    statuses: list[int] = []

    def withdraw() -> None:
        gate.wait()
        statuses.append(client.withdraw(wid, str(amount)).status_code)

    threads = [threading.Thread(target=withdraw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201, 201] + [400] * 6
    assert client.balances(wid) == (legacy - 2 * amount, legacy - 2 * amount)


def test_mismatch_log_counts_and_logs_only_when_on(
    client: Client, service: ServiceProcess, service_db: ScenarioDb
) -> None:
    tenant, wid = "t-006", wallet_id(service_db, "t-006", "u-000005")
    client.flags(tenant, shadow=True, mismatch_log=False, enforced=True, enforce=False)
    assert client.withdraw(wid, "1.00").status_code == 201  # not backfilled: differs, unlogged
    assert client.metric("ledger_balance_mismatch_total", tenant=tenant) == 0.0

    client.flags(tenant, mismatch_log=True)
    assert client.withdraw(wid, "1.00").status_code == 201
    assert client.metric("ledger_balance_mismatch_total", tenant=tenant) == 1.0
    assert f"ledger balance mismatch: tenant={tenant} wallet={wid}" in service.log()

    backfill(service_db, "--tenant", tenant)
    assert client.withdraw(wid, "1.00").status_code == 201
    assert client.metric("ledger_balance_mismatch_total", tenant=tenant) == 1.0


# --- fault switches --------------------------------------------------------------------------


def test_fault_skip_ledger_write_makes_mismatches_appear(
    small_db: ScenarioDb, start: StartService
) -> None:
    backfill(small_db)
    client = Client(start(small_db, faults={Fault.SKIP_LEDGER_WRITE}))
    assert client.get("/healthz").json()["faults"] == ["LEDGER_FAULT_SKIP_LEDGER_WRITE"]
    client.flags(None, shadow=True, mismatch_log=True)
    assert client.deposit("t-001", event(), "7.00").status_code == 200
    assert client.metric("ledger_balance_mismatch_total", tenant="t-001") == 1.0
    assert mismatched(small_db) == 1


def test_fault_double_apply_webhook_credits_the_legacy_balance_twice(
    small_db: ScenarioDb, start: StartService
) -> None:
    client = Client(start(small_db, faults={Fault.DOUBLE_APPLY_WEBHOOK}))
    client.flags(None, shadow=True)
    wid = wallet_id(small_db, "t-001")
    legacy, ledger = client.balances(wid)
    assert client.deposit("t-001", event(), "7.00").status_code == 200
    assert client.balances(wid) == (legacy + 14, ledger + 7)


def test_fault_wrong_secret_gets_401_when_enforced(
    small_db: ScenarioDb, start: StartService
) -> None:
    client = Client(start(small_db, webhook_secret="not-the-providers-secret"))
    client.flags(None, enforced=True)
    refused = client.deposit("t-001", event(), "7.00")
    assert (refused.status_code, refused.json()["code"]) == (401, "WEBHOOK_SIGNATURE_INVALID")
    client.flags(None, enforced=False)
    assert client.deposit("t-001", event(), "7.00").status_code == 200
    assert client.metric("ledger_webhook_total", tenant="t-001", outcome="would_reject") == 1.0


# --- seed and backfill -----------------------------------------------------------------------


def test_seed_creates_the_pre_rollout_state_and_reruns_add_nothing(small_db: ScenarioDb) -> None:
    assert small_db.scalar("SELECT string_agg(id, ',' ORDER BY id) FROM tenants") == (
        "t-001,t-002,t-003"
    )
    assert small_db.scalar("SELECT count(*) FROM ledger_entries") == 0
    assert small_db.scalar("SELECT count(*) FROM wallets WHERE balance <= 0") == 0
    assert small_db.scalar("SELECT count(DISTINCT status) FROM withdrawals") == 1
    again = run_script(small_db.url, "seed", "--tenants", "3", "--wallets-per-tenant", "30")
    assert "0 tenants, 0 wallets, 0 withdrawals" in again.stdout


def test_backfill_dry_run_then_run_then_nothing_left(small_db: ScenarioDb) -> None:
    dry = backfill(small_db, "--dry-run", "--batch-size", "7")
    assert small_db.scalar("SELECT count(*) FROM ledger_entries") == 0
    assert len(re.findall(r"^batch \d+: .* would insert", dry, re.M)) == 13  # ceil(90 / 7)
    for tenant in ("t-001", "t-002", "t-003"):
        assert f"tenant {tenant}: would insert 30 entries" in dry
    legacy_total = small_db.scalar("SELECT sum(balance) FROM wallets")
    assert f"would insert 90 entries, net +{legacy_total}, 3 tenants" in dry

    done = backfill(small_db, "--batch-size", "7")
    assert f"inserted 90 entries, net +{legacy_total}" in done
    assert mismatched(small_db) == 0
    assert (
        small_db.scalar("SELECT count(*) FROM ledger_entries WHERE entry_type = 'opening_balance'")
        == 90
    )
    assert "inserted 0 entries, net +0" in backfill(small_db, "--batch-size", "7")
    assert "would insert 0 entries" in backfill(small_db, "--dry-run")

    # A later difference gets an adjustment with a reference of its own; then nothing again.
    small_db.execute("UPDATE wallets SET balance = balance - 2.5 WHERE owner_ref = 'u-000007'")
    assert "inserted 3 entries, net -7.50" in backfill(small_db)
    assert (
        small_db.scalar(
            "SELECT count(*) FROM ledger_entries"
            " WHERE entry_type = 'adjustment' AND reference LIKE 'backfill:after-%'"
        )
        == 3
    )
    assert mismatched(small_db) == 0
    assert "inserted 0 entries" in backfill(small_db)


def test_backfill_tenant_scope(small_db: ScenarioDb) -> None:
    assert "tenant t-002: would insert 30 entries" in backfill(
        small_db, "--tenant", "t-002", "--dry-run"
    )
    out = backfill(small_db, "--tenant", "t-002")
    assert "total: 30 wallets" in out and "inserted 30 entries" in out
    assert small_db.scalar("SELECT string_agg(DISTINCT tenant_id, ',') FROM ledger_entries") == (
        "t-002"
    )
    assert mismatched(small_db, "t-002") == 0 and mismatched(small_db) == 60
    unknown = run_script(small_db.url, "backfill_wallet_balances", "--tenant", "t-404")
    assert unknown.returncode == 2 and "no tenant t-404" in unknown.stderr


def test_backfill_interrupted_keeps_committed_batches_and_a_rerun_finishes(
    small_db: ScenarioDb,
) -> None:
    # Hold the 25th wallet: batches 1-2 (wallets 1-20) commit, batch 3 waits; then kill it.
    blocker = small_db.engine.connect()
    ids = list(blocker.execute(text("SELECT id FROM wallets ORDER BY id")).scalars())
    blocker.execute(text("SELECT 1 FROM wallets WHERE id = :id FOR UPDATE"), {"id": ids[24]})
    with subprocess.Popen(
        [sys.executable, "-m", "backend.scripts.backfill_wallet_balances", "--batch-size", "10"],
        cwd=REFERENCE_BACKEND,
        env={**os.environ, "DATABASE_URL": small_db.url},
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        watchdog = threading.Timer(30, process.kill)  # never hang the suite on a bad wait
        watchdog.start()
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline() for _ in range(3)]
            assert lines[2].startswith("batch 2: wallets"), lines
        finally:
            process.kill()
            watchdog.cancel()
            blocker.rollback()
            blocker.close()
    assert small_db.scalar("SELECT count(*) FROM ledger_entries") == 20
    assert mismatched(small_db) == 70
    assert "inserted 70 entries" in backfill(small_db, "--batch-size", "10")
    assert mismatched(small_db) == 0


def test_the_reference_service_obeys_the_rule_the_gate_judges_by(scenario_db: ScenarioDb) -> None:
    """The service under verification decides its flags itself (as a team's service does); the
    gate's rule must name the same state for every tenant, or its checks judge a fiction."""
    scenario_db.upgrade("head")
    scenario_db.execute(
        "INSERT INTO tenants (id, name)"
        " SELECT format('t-00%s', i), 't' FROM generate_series(1, 3) i"
    )
    shadow, mismatch, signature, enforce = KNOWN_FLAGS
    t0, hour = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC), dt.timedelta(hours=1)
    rows = [
        FlagState(shadow, None, True, t0),  # global on, no override
        FlagState(mismatch, None, False, t0),  # global off, overridden on for t-001
        FlagState(mismatch, "t-001", True, t0 + hour),
        FlagState(signature, None, True, t0 + 2 * hour),  # global on, overridden off (older)
        FlagState(signature, "t-002", False, t0 - hour),
        FlagState(enforce, "t-003", True, t0),  # a tenant row only
    ]
    tenants = ["t-001", "t-002", "t-003"]
    with scenario_db.engine.begin() as connection:
        insert_flag_states(connection, rows)
        served = {tenant: flags_for(connection, tenant) for tenant in tenants}
    judged = {(e.tenant, e.key): e.enabled for e in effective(rows, tenants, KNOWN_FLAGS)}
    for tenant, flags in served.items():
        seen = (
            flags.shadow_write,
            flags.mismatch_log,
            flags.signature_enforced,
            flags.enforce_balance,
        )
        assert seen == tuple(judged[tenant, key] for key in KNOWN_FLAGS), tenant
    # The rows exercise every branch of the rule.
    assert served["t-001"].mismatch_log and not served["t-002"].mismatch_log
    assert not served["t-002"].signature_enforced and served["t-003"].signature_enforced
    assert served["t-003"].enforce_balance and not served["t-001"].enforce_balance
