"""Shared fixtures: one real Postgres per test session, a template database at the baseline
revision, cheap clones of it per test, and a runner for phase suites through pytester."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.checks.metrics.prometheus import PrometheusClient
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    EphemeralUnavailable,
    start_ephemeral,
)
from pytest_ledger_rollout.targets.prometheus_server import PrometheusServer

from .support import (
    CHAIN,
    REFERENCE_BACKEND,
    RELEASE,
    PhaseRun,
    RunPhase,
    ScenarioDb,
    cloned_database,
    missing_component,
)

pytest_plugins = ["pytester"]


def database_url(server_url: str, database: str) -> str:
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EphemeralServer]:
    try:
        server = start_ephemeral(EphemeralSettings(provider="local"))
    except EphemeralUnavailable as exc:
        missing_component("a local PostgreSQL server", str(exc))
    with server:
        yield server


@pytest.fixture(scope="session")
def admin_engine(pg_server: EphemeralServer) -> Iterator[Engine]:
    engine = create_engine(pg_server.url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def baseline_template(admin_engine: Engine, pg_server: EphemeralServer) -> str:
    """A database at the baseline revision (abcd1234), cloned for each scenario."""
    with admin_engine.connect() as connection:
        connection.execute(text("CREATE DATABASE tmpl_baseline"))
    engine = create_engine(database_url(pg_server.url, "tmpl_baseline"))
    with engine.connect() as connection:
        AlembicProject(REFERENCE_BACKEND / "alembic.ini").upgrade(connection, CHAIN[0])
    engine.dispose()
    return "tmpl_baseline"


@pytest.fixture
def scenario_db(
    admin_engine: Engine, baseline_template: str, pg_server: EphemeralServer
) -> Iterator[ScenarioDb]:
    """A fresh clone of the baseline database, dropped afterwards."""
    with cloned_database(admin_engine, baseline_template, pg_server.url, "scenario") as db:
        yield db


@pytest.fixture
def backend_copy(tmp_path: Path) -> Path:
    """A copy of the reference backend a test may alter (a second head, a broken downgrade)."""
    copy = tmp_path / "backend"
    shutil.copytree(REFERENCE_BACKEND, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture
def run_phase(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> RunPhase:
    """Run a phase suite in-process against a config, with DATABASE_URL set as given."""

    def run(
        config: Path,
        *args: str,
        url: str | None = None,
        phase: str = "stg-mig",
        reports: Path | None = None,
        release: str | None = RELEASE,
    ) -> PhaseRun:
        if url is None:
            monkeypatch.delenv("DATABASE_URL", raising=False)
        else:
            monkeypatch.setenv("DATABASE_URL", url)
        reports = reports or pytester.path / f"reports-{uuid.uuid4().hex[:6]}"
        result = pytester.runpytest_inprocess(
            f"--phase={phase}",
            f"--rollout-config={config}",
            f"--signoff-dir={reports}",
            "-p",
            "no:cacheprovider",
            *([f"--release={release}"] if release else []),
            *args,
        )
        return PhaseRun(result, reports, phase)

    return run


@pytest.fixture
def client(prometheus: PrometheusServer) -> Iterator[PrometheusClient]:
    """A client of the module's own ``prometheus`` fixture."""
    with PrometheusClient(prometheus.url, timeout=5) as client:
        yield client
