"""The embedded defaults of the later phases, played on a throwaway database before the checks:
what is played is the phase's ``rehearsal`` (the step model); ``rehearse`` dispatches on it.

STG-ROLL rehearses runbook Phase 2: the service is started from the target's app_dir as a
process, a real Prometheus scrapes it, and the runbook's steps are applied in order with
traffic driven through the service: 2.1 flags, 2.2 dry run then backfill, 2.3 signature flag
(with traffic before and after it, for the 401 watch), 2.4 enforcement. The suite then decides
the phase like it would on staging. PRD-PILOT and PRD-GA rehearse production's state (pilot
tenants, or every wave, flipped) with a matching Prometheus history. The report says
REHEARSAL."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from sqlalchemy import Engine, create_engine, text

from pytest_ledger_rollout.checks.flags import SQL
from pytest_ledger_rollout.checks.smoke import SIGNATURE_HEADER, sign
from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.phases.model import Phase, Rehearsal
from pytest_ledger_rollout.phases.opened_target import ServiceEndpoints
from pytest_ledger_rollout.processes import (
    die_with_parent,
    free_port,
    interpreter_path,
    stop_process,
)
from pytest_ledger_rollout.targets.prometheus_server import Series, start_prometheus

READY_TIMEOUT_S = 30.0


class RehearsalFailed(RuntimeError):
    """A rehearsal step could not be carried out; the message says which and shows output."""


@dataclass(frozen=True)
class RehearsalPlan:
    """Commands run in the target's app_dir, and how long the 401 watch's windows last."""

    seed_command: str = "python -m backend.scripts.seed --tenants 3 --wallets-per-tenant 40"
    service_command: str = (
        "python -m backend.serve --exit-with-parent --host 127.0.0.1 --port {port}"
    )
    service_secret_env: str = "WEBHOOK_SECRET"
    backfill_command: str = "python -m backend.scripts.backfill_wallet_balances --batch-size 1000"
    window: timedelta = timedelta(seconds=8)
    min_requests: int = 20  # per window: the traffic sends ~10x that


def rehearse(
    config: RolloutConfig,
    phase: Phase,
    app_dir: str,
    engine: Engine,
    database_url: str,
    environment: dict[str, str],
    stack: ExitStack,
) -> ServiceEndpoints:
    """Play ``phase``'s rehearsal on the throwaway database (``engine``, ``database_url``)."""
    if phase.rehearsal is Rehearsal.STAGING_ROLLOUT:
        return rehearse_stg_roll(config, RehearsalPlan(), app_dir, engine, environment, stack)
    if phase.rehearsal in (Rehearsal.PILOT_STATE, Rehearsal.GA_STATE):
        return rehearse_production(config, phase, app_dir, database_url, environment, stack)
    raise RehearsalFailed(f"phase {phase.name} has no rehearsal ({phase.rehearsal})")


def rehearse_stg_roll(
    config: RolloutConfig,
    plan: RehearsalPlan,
    app_dir: str,
    engine: Engine,
    environment: dict[str, str],
    stack: ExitStack,
) -> ServiceEndpoints:
    """Run Phase 2 on the throwaway database; returns where the service and Prometheus are."""
    workdir = Path(tempfile.mkdtemp(prefix="ledger-rollout-rehearsal-"))
    secret = secrets.token_urlsafe(24)
    env = {
        **environment,
        plan.service_secret_env: secret,
        "PYTHONUNBUFFERED": "1",
        "PATH": interpreter_path(environment.get("PATH")),
    }
    _run(plan.seed_command, app_dir, env, "seed")
    service_url = _start_service(plan, app_dir, env, workdir, stack)
    prometheus = start_prometheus(workdir / "prometheus", scrape=[service_url.split("//")[1]])
    stack.callback(prometheus.stop)
    flags = config.flags
    admin = _Admin(service_url)
    for key in flags.steps.get("2.1", ()):
        admin.set_flag(key)
    _run(plan.backfill_command.replace(" --dry-run", "") + " --dry-run", app_dir, env, "dry run")
    _run(plan.backfill_command, app_dir, env, "backfill")
    wallets = wallets_for_traffic(engine)
    with Traffic(service_url, secret, wallets):
        wait_for_scrapes(prometheus.url, service_url.split("//")[1])
        time.sleep(plan.window.total_seconds())  # the watch's window before the flip
        for key in flags.steps.get("2.3", ()):
            admin.set_flag(key)
        time.sleep(plan.window.total_seconds() + 2.5)  # after the flip, and its last scrapes
    for key in flags.steps.get("2.4", ()):
        admin.set_flag(key)
    watch = replace(
        config.metrics.webhook_401,
        before_window=plan.window,
        after_window=plan.window,
        min_requests=plan.min_requests,
    )
    return ServiceEndpoints(service_url, prometheus.url, secret, watch)


def _run(command: str, cwd: str, env: dict[str, str], what: str) -> str:
    result = subprocess.run(
        shlex.split(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RehearsalFailed(
            f"rehearsal step '{what}' (`{command}`) exited {result.returncode}:\n{tail}"
        )
    return result.stdout


def _start_service(
    plan: RehearsalPlan, app_dir: str, env: dict[str, str], workdir: Path, stack: ExitStack
) -> str:
    port = free_port()
    log = (workdir / "service.log").open("wb")
    stack.callback(log.close)
    process = subprocess.Popen(
        shlex.split(plan.service_command.format(port=port)),
        cwd=app_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    stack.callback(stop_process, process)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url
        except requests.RequestException:
            pass
        time.sleep(0.05)
    tail = (workdir / "service.log").read_text(errors="replace")[-1500:]
    raise RehearsalFailed(f"the service did not answer {url}/healthz; its log ends:\n{tail}")


@dataclass
class _Admin:
    base_url: str

    def set_flag(self, key: str) -> None:
        response = requests.put(
            f"{self.base_url}/admin/flags/{key}",
            json={"enabled": True, "changed_by": "ledger-rollout rehearsal"},
            timeout=10,
        )
        if response.status_code != 200:
            raise RehearsalFailed(f"turning {key} on answered {response.status_code}")


def wallets_for_traffic(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT tenant_id, owner_ref FROM wallets ORDER BY id LIMIT 200")
        ).all()
    if not rows:
        raise RehearsalFailed("the seed created no wallets")
    return [(str(tenant), str(owner)) for tenant, owner in rows]


def wait_for_scrapes(prometheus_url: str, target: str) -> None:
    """Until Prometheus has scraped the service twice (increase() needs two samples)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    query = f'count_over_time(up{{instance="{target}"}}[1m])'
    while time.monotonic() < deadline:
        try:
            answer = requests.get(
                f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=5
            ).json()
            result = answer.get("data", {}).get("result", [])
            if result and float(result[0]["value"][1]) >= 2:
                return
        except (requests.RequestException, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.25)
    raise RehearsalFailed(f"Prometheus at {prometheus_url} did not scrape {target} in time")


class Traffic:
    """Clients in a background thread sending signed deposits, ~50 a second.

    With ``refusals_are_errors`` (honest clients) any answer but 200 stops the traffic and is
    raised on exit; otherwise refusals are part of the traffic (e.g. a wrong signing secret)."""

    def __init__(
        self,
        service_url: str,
        secret: str,
        wallets: list[tuple[str, str]],
        refusals_are_errors: bool = True,
    ) -> None:
        self.service_url, self.secret, self.wallets = service_url, secret, wallets
        self.refusals_are_errors = refusals_are_errors
        self.batch = uuid.uuid4().hex[:8]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._drive, name="rehearsal-traffic", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        if self.errors:
            raise RehearsalFailed("rehearsal traffic failed: " + "; ".join(self.errors[:3]))

    def _drive(self) -> None:
        with requests.Session() as session:
            sent = 0
            while not self.stopping.is_set():
                tenant, owner = self.wallets[sent % len(self.wallets)]
                body = json.dumps(
                    {
                        "event_id": f"rehearsal-{self.batch}-{sent}",
                        "tenant": tenant,
                        "owner_ref": owner,
                        "amount": "5.00",
                    }
                ).encode()
                try:
                    response = session.post(
                        f"{self.service_url}/webhooks/rehearsal/deposits",
                        data=body,
                        headers={SIGNATURE_HEADER: sign(self.secret, body)},
                        timeout=10,
                    )
                except requests.RequestException as exc:
                    self.errors.append(type(exc).__name__)
                    return
                if response.status_code != 200 and self.refusals_are_errors:
                    self.errors.append(f"deposit answered {response.status_code}")
                    return
                sent += 1
                self.stopping.wait(0.02)


# A production phase's rehearsal dates its history back: promtool can only backfill blocks
# well behind the head block Prometheus writes to, and the OPS-02 windows need hours.
HISTORY_AGE = timedelta(days=2)
HISTORY_STEP = timedelta(seconds=15)
_TENANT = re.compile(r"^t-(\d{3})$")


def rehearse_production(
    config: RolloutConfig,
    phase: Phase,
    app_dir: str,
    database_url: str,
    environment: dict[str, str],
    stack: ExitStack,
) -> ServiceEndpoints:
    """PRD-PILOT / PRD-GA on the throwaway database: seeded and backfilled, the flags set per
    tenant as the operator of Phase 3 (and 4) would, and a Prometheus holding a matching
    history. The suite then reads it all through production's read-only session."""
    pilot, ga = config.pilot, config.ga
    source = config.flags.source
    if source.kind != SQL or source.query is not None:
        # Flips are backdated hours before the evaluation: only a table can hold that history.
        raise RehearsalFailed(
            "the production rehearsal writes the flags into the [flags] table (table, "
            "key_column, ...); a flag service, a file or a query is no store it can backdate"
        )
    waves = ga.waves if phase.rehearsal is Rehearsal.GA_STATE else (pilot.tenants,)
    tenants = sorted({*pilot.tenants, *pilot.control_tenants, *(t for w in ga.waves for t in w)})
    if not tenants or not all(_TENANT.match(tenant) for tenant in tenants):
        raise RehearsalFailed(
            "the rehearsal seeds tenants t-001, t-002, …: name the pilot, control and wave "
            f"tenants that way in the rollout config (seen: {', '.join(tenants) or 'none'})"
        )
    env = {**environment, "DATABASE_URL": database_url}
    env["PATH"] = interpreter_path(environment.get("PATH"))
    plan = RehearsalPlan()
    count = max(int(tenant[2:]) for tenant in tenants)
    _run(plan.seed_command.replace("--tenants 3", f"--tenants {count}"), app_dir, env, "seed")
    _run(plan.backfill_command, app_dir, env, "backfill")
    at = (datetime.now(UTC) - HISTORY_AGE).replace(second=0, microsecond=0)
    # The latest wave flipped 70 minutes before the evaluation (the OPS-02 window is the last
    # hour); earlier waves three hours apart before it.
    flips = {
        tenant: at - timedelta(minutes=70) - (len(waves) - 1 - index) * timedelta(hours=3)
        for index, wave in enumerate(waves)
        for tenant in wave
    }
    first = min(flips.values())
    _set_production_state(database_url, config, flips, first)
    series = _history(tenants, first - timedelta(hours=2), at + timedelta(minutes=1))
    workdir = Path(tempfile.mkdtemp(prefix="ledger-rollout-rehearsal-"))
    prometheus = start_prometheus(workdir / "prometheus", history=series)
    stack.callback(prometheus.stop)
    return ServiceEndpoints(prometheus_url=prometheus.url, evaluate_at=at)


def _set_production_state(
    database_url: str, config: RolloutConfig, flips: dict[str, datetime], first: datetime
) -> None:
    flags, ledger = config.flags, config.ledger
    engine = create_engine(database_url)
    quote = engine.dialect.identifier_preparer.quote
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"UPDATE {quote(ledger.entries)} SET {quote(ledger.entry_created_at)} = :at"
                    f" WHERE {quote(ledger.entry_type)} = ANY(:types)"
                ),
                {"at": first - timedelta(hours=1), "types": list(ledger.backfill_entry_types)},
            )
            rows = [
                {
                    "key": key,
                    "tenant": None,
                    "enabled": on,
                    "changed_at": first - timedelta(hours=2),
                }
                for key, on in (
                    *((key, True) for key in flags.steps.get("2.1", ())),
                    (flags.signature_flag, False),
                    (flags.enforce_flag, False),
                )
            ] + [
                {"key": key, "tenant": tenant, "enabled": True, "changed_at": when}
                for tenant, when in flips.items()
                for key in (flags.signature_flag, flags.enforce_flag)
            ]
            connection.execute(text(flags.source.table.insert(quote)), rows)
    finally:
        engine.dispose()


def _history(tenants: list[str], start: datetime, end: datetime) -> list[Series]:
    """Steady traffic for every tenant: 12 withdrawals a minute (one 400 INSUFFICIENT_FUNDS in
    24), 20 accepted webhooks, no signature failures, no mismatches; the service scraped up."""
    steps = int((end - start) / HISTORY_STEP)
    times = [start + i * HISTORY_STEP for i in range(steps + 1)]
    where = {"job": "ledger", "instance": "rehearsal:8000"}
    route = "/wallets/{wallet_id}/withdrawals"

    def counter(family: str, labels: dict[str, str], per_step: float) -> Series:
        samples = [(when, float(int(i * per_step))) for i, when in enumerate(times)]
        return Series(family, "counter", {**where, **labels}, samples)

    series = [Series("up", "gauge", where, [(when, 1.0) for when in times])]
    for tenant in tenants:
        series += [
            counter(
                "ledger_http_responses",
                {"route": route, "status": "201", "code": "OK", "tenant": tenant},
                3,
            ),
            counter(
                "ledger_http_responses",
                {"route": route, "status": "400", "code": "INSUFFICIENT_FUNDS", "tenant": tenant},
                0.125,
            ),
            counter("ledger_webhook", {"tenant": tenant, "outcome": "accepted"}, 5),
            counter("ledger_webhook", {"tenant": tenant, "outcome": "would_reject"}, 0),
            counter("ledger_webhook", {"tenant": tenant, "outcome": "rejected_signature"}, 0),
            counter("ledger_balance_mismatch", {"tenant": tenant}, 0),
        ]
    return series
