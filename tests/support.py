"""Helpers for the tests: constants of the reference chain, scenario databases, phase runs."""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import Connection, make_url

from pytest_ledger_rollout.checks.flags import FlagState, FlagTable
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.config import load_config
from pytest_ledger_rollout.phases.model import PHASES
from pytest_ledger_rollout.phases.signoff import SCHEMA_VERSION, write_checksums
from pytest_ledger_rollout.targets.prometheus_server import PrometheusUnavailable, find_binaries

REPO = Path(__file__).resolve().parent.parent
REFERENCE_BACKEND = REPO / "examples" / "reference_backend"
CHAIN = load_config(REPO / "rollout.toml").migrations.expected_chain
HEAD = CHAIN[-1]


@dataclass(frozen=True)
class ScenarioDb:
    name: str
    url: str = field(repr=False)
    engine: Engine

    def execute(self, *statements: str) -> None:
        with self.engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))

    def scalar(self, query: str) -> object:
        with self.engine.connect() as connection:
            return connection.execute(text(query)).scalar()

    def current(self) -> tuple[str, ...]:
        with self.engine.connect() as connection:
            return AlembicProject(REFERENCE_BACKEND / "alembic.ini").current(connection)

    def upgrade(self, revision: str = "head") -> None:
        with self.engine.connect() as connection:
            AlembicProject(REFERENCE_BACKEND / "alembic.ini").upgrade(connection, revision)


def write_config(
    folder: Path,
    *,
    database: str,
    alembic_ini: Path = REFERENCE_BACKEND / "alembic.ini",
    expected_chain: tuple[str, ...] = CHAIN,
    kind: str = "staging",
    host: str = "127.0.0.1",
    app_dir: Path | None = REFERENCE_BACKEND,
    target_extra: str = "",
    extra: str = "",
) -> Path:
    chain = ", ".join(f'"{rev}"' for rev in expected_chain)
    app = f'app_host = "local://"\napp_dir = "{app_dir}"' if app_dir else ""
    path = folder / "rollout.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [migrations]
            alembic_ini = "{alembic_ini}"
            expected_chain = [{chain}]

            [[schema.unique]]
            table = "reconciliation_findings"
            columns = ["provider", "provider_event_id", "finding_type"]
            name = "uq_recon_provider_event_type"

            [targets.local]
            kind = "ephemeral"
            provider = "local"
            app_host = "local://"
            app_dir = "{REFERENCE_BACKEND}"

            [targets.staging]
            kind = "{kind}"
            database_url_env = "DATABASE_URL"
            expect = {{ host = "{host}", database = "{database}" }}
            """
        )
        + app
        + "\n"
        + target_extra
        + "\n"
        + extra
    )
    return path


@dataclass
class PhaseRun:
    result: pytest.RunResult
    reports: Path
    phase: str

    @property
    def output(self) -> str:
        return "\n".join(self.result.outlines + self.result.errlines)

    def artifact(self, suffix: str) -> Path:
        found = sorted(self.reports.glob(f"{self.phase}-*{suffix}"))
        assert len(found) == 1, f"expected one {suffix} in {self.reports}: {found}"
        return found[0]

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.artifact(".json").read_text())
        return data

    def step(self, step_id: str) -> dict[str, Any]:
        steps = self.json()["steps"]
        assert isinstance(steps, list)
        return next(s for s in steps if s["id"] == step_id)


RunPhase = Callable[..., PhaseRun]


def require_prometheus() -> None:
    try:
        find_binaries()
    except PrometheusUnavailable as exc:
        missing_component("a Prometheus server (prometheus, promtool)", str(exc))


def missing_component(what: str, install: str) -> None:
    """In CI a missing component fails the run; on a laptop the test skips and says why."""
    message = f"{what} is not available: {install}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def insert_flag_states(connection: Connection, states: Sequence[FlagState]) -> None:
    """The rows into the reference flag table, by the flag model's own INSERT."""
    quote = connection.dialect.identifier_preparer.quote
    connection.execute(text(FlagTable().insert(quote)), [vars(state) for state in states])


@contextmanager
def cloned_database(
    admin_engine: Engine, template: str, server_url: str, prefix: str
) -> Iterator[ScenarioDb]:
    """A fresh database cloned from ``template`` on the test server, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin_engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name} TEMPLATE {template}"))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        yield ScenarioDb(name, url, engine)
    finally:
        engine.dispose()
        with admin_engine.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@contextmanager
def flags_restored(db: ScenarioDb) -> Iterator[None]:
    """Puts ``feature_flags`` back as it was (rows, states, change times: the gate reads them
    all) for a test that flips flags on a database other tests share."""
    saved = db.scalar("SELECT coalesce(json_agg(f), '[]')::text FROM feature_flags f")
    try:
        yield
    finally:
        with db.engine.begin() as connection:
            connection.execute(text("DELETE FROM feature_flags"))
            connection.execute(
                text(
                    "INSERT INTO feature_flags SELECT * FROM"
                    " json_populate_recordset(NULL::feature_flags, CAST(:saved AS json))"
                ),
                {"saved": saved},
            )


RELEASE = "2026.11.3"
IDENTITY = {
    "database": "ledger",
    "server_addr": "10.0.0.5",
    "server_port": 5432,
    "system_identifier": "7301234567890123456",
}


def passed_steps(phase: str) -> list[dict[str, Any]]:
    """Every step of ``phase`` passed by one check, as the sign-off JSON records them."""
    check = {"name": "check", "outcome": "passed", "summary": "ok", "message": "", "evidence": []}
    return [
        {"id": s.id, "title": s.title, "outcome": "passed", "evidence": "ok", "waiver": None,
         "checks": [check]}
        for s in PHASES[phase].steps
    ]  # fmt: skip


def write_signoff(
    folder: Path,
    phase: str,
    *,
    target: str = "staging",
    stamp: str = "20261128T140512Z",
    rehearsal: bool = False,
    head: str = HEAD,
    release: str | None = RELEASE,
    identity: dict[str, Any] | None = IDENTITY,
    decision: str | None = None,
    dry_run: bool = False,
    **fields: Any,
) -> Path:
    """A sign-off as a phase run writes it (this schema version): HTML, JSON and the sha256 of
    both. ``decision`` is OPS-02's verdict (GO, HOLD, ROLLBACK), ``dry_run`` whether it was."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{phase}-{target}-{stamp}"
    environment = {"alembic head (expected)": head}
    if release is not None:
        environment["release"] = release
    document = {
        "schema_version": SCHEMA_VERSION,
        "plugin_version": "0.1.0",
        "phase": phase,
        "target": target,
        "target_kind": "ephemeral" if rehearsal else "staging",
        "rehearsal": rehearsal,
        "verdict": "PASS",
        "decision": {"verdict": decision, "dry_run": dry_run} if decision else None,
        "aborted": None,
        "head": head,
        "release": release,
        "identity": identity,
        "steps": passed_steps(phase),
        "environment": environment,
        **fields,
    }
    html, signoff = stem.with_suffix(".html"), stem.with_suffix(".json")
    html.write_text("<html>sign-off</html>")
    signoff.write_text(json.dumps(document, indent=2))
    write_checksums([html, signoff], stem.with_suffix(".sha256"))
    return signoff
