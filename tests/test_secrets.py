"""No form of a secret in any artifact: terminal, JSON, HTML, junit XML and the --debug log, on
a failing run and on a crash with --full-trace --showlocals, for the database password and the
webhook secret (forced into the run as its release string).

Each secret starts and ends with a run of letters no encoding changes, so a leak in any
spelling (raw, URL-quoted, repr, libpq, JSON, HTML, cut by a truncated repr) shows it."""

from __future__ import annotations

import html
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.masking import MIN_PREFIX, Scrubber, secret_forms
from pytest_ledger_rollout.processes import free_port
from pytest_ledger_rollout.targets.postgres import (
    EphemeralSettings,
    EphemeralUnavailable,
    start_ephemeral,
)
from pytest_ledger_rollout.targets.postgres.local import LocalServer
from pytest_ledger_rollout.targets.postgres.watchdog import child_environment

from .support import CHAIN, PhaseRun, RunPhase, ScenarioDb, missing_component, write_config

SPECIALS = "@:/?#%'\"\\&<>; "
PASSWORD = f"Zq8Kx2Lm{SPECIALS}Vt4Rw9Np-padding-to-get-truncated-in-reprs-Hy6Jc3Bd"
WEBHOOK = f"Wb5Gn7Qs{SPECIALS}Fk2Dm8Tx"
ARTIFACTS = ("terminal", ".json", ".html", "junit.xml", "debug.log")


def heads_and_tails(secret: str) -> list[str]:
    return [secret[:MIN_PREFIX], secret[-MIN_PREFIX:]]


def assert_no_secret(run: PhaseRun, tmp_path: Path, *secrets: str) -> None:
    texts = {"terminal": run.output}
    texts[".json"] = run.artifact(".json").read_text()
    texts[".html"] = run.artifact(".html").read_text()
    texts["junit.xml"] = (tmp_path / "junit.xml").read_text()
    texts["debug.log"] = (tmp_path / "debug.log").read_text()
    assert set(texts) == set(ARTIFACTS)
    for name, text in texts.items():
        assert text.strip(), f"{name} is empty: nothing was proven"
        for secret in secrets:
            for fragment in heads_and_tails(secret):
                leaks = [line for line in text.splitlines() if fragment in line]
                assert not leaks, f"{fragment!r} of a secret in the {name}: {leaks[:3]}"


@pytest.fixture
def nasty_role(scenario_db: ScenarioDb) -> Iterator[str]:
    """A login role with the password, and the URL to the scenario database as that role."""
    role = f"nasty_{uuid.uuid4().hex[:8]}"
    with scenario_db.engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        query = sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(PASSWORD)
        )
        raw.cursor().execute(query.as_string(raw))  # type: ignore[arg-type]
        raw.commit()
    url = make_url(scenario_db.url).set(username=role, password=PASSWORD)
    yield url.render_as_string(hide_password=False)
    scenario_db.execute(f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def run_with_every_artifact(
    run_phase: RunPhase, config: Path, url: str, tmp_path: Path, *extra: str
) -> PhaseRun:
    return run_phase(
        config,
        "--target=staging",
        f"--release={WEBHOOK}",
        f"--junitxml={tmp_path / 'junit.xml'}",
        f"--debug={tmp_path / 'debug.log'}",
        "--full-trace",
        "--showlocals",
        "-vv",
        *extra,
        url=url,
    )


@pytest.mark.parametrize(
    ("chain", "verdict"), [(CHAIN, "PASS"), ((*CHAIN, "zz_not_a_revision"), "FAIL")]
)
def test_a_passing_or_failing_run_shows_no_secret_anywhere(
    scenario_db: ScenarioDb,
    nasty_role: str,
    tmp_path: Path,
    run_phase: RunPhase,
    monkeypatch: pytest.MonkeyPatch,
    chain: tuple[str, ...],
    verdict: str,
) -> None:
    monkeypatch.setenv("LEDGER_WEBHOOK_SECRET", WEBHOOK)
    config = write_config(tmp_path, database=scenario_db.name, expected_chain=chain)
    run = run_with_every_artifact(run_phase, config, nasty_role, tmp_path)
    assert run.json()["verdict"] == verdict, run.output
    assert_no_secret(run, tmp_path, PASSWORD, WEBHOOK)


def test_a_crash_with_the_database_down_shows_no_secret_anywhere(
    tmp_path: Path,
    run_phase: RunPhase,
    monkeypatch: pytest.MonkeyPatch,
    pytester: pytest.Pytester,
) -> None:
    monkeypatch.setenv("LEDGER_WEBHOOK_SECRET", WEBHOOK)
    config = write_config(tmp_path, database="ledger")
    url = f"postgresql://rollout:{quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}/ledger"
    # The database down is a finding now, not a crash ...
    run = run_with_every_artifact(run_phase, config, url, tmp_path)
    assert "INTERNALERROR" not in run.output
    assert "No server accepts connections there" in run.output
    assert_no_secret(run, tmp_path, PASSWORD, WEBHOOK)
    # ... so a crash is forced: a plugin that holds the URL in a local and raises.
    pytester.makepyfile(
        crash=(
            "import os\n\n\n"
            "def pytest_collection_finish(session):\n"
            "    url = os.environ['DATABASE_URL']\n"
            "    raise RuntimeError('crashed holding ' + repr(url)[:40])\n"
        )
    )
    pytester.syspathinsert()
    run = run_with_every_artifact(run_phase, config, url, tmp_path, "-p", "crash")
    assert "INTERNALERROR" in run.output and "crashed holding" in run.output
    assert "***" in run.output
    assert_no_secret(run, tmp_path, PASSWORD, WEBHOOK)


@pytest.mark.parametrize(
    "spelling",
    [
        PASSWORD,
        quote(PASSWORD, safe=""),
        quote(PASSWORD),
        repr(PASSWORD),
        PASSWORD.replace("\\", "\\\\").replace("'", "\\'"),  # libpq conninfo
        json.dumps(PASSWORD),
        html.escape(PASSWORD, quote=True),
        html.escape(json.dumps(repr(PASSWORD))),  # a repr in JSON in an HTML attribute
        repr(f"postgresql://u:{PASSWORD}@h/d")[:30] + "...",  # pytest's truncated repr
        "..." + repr(PASSWORD)[-20:],
        repr(PASSWORD)[:12] + "…",
    ],
)
def test_every_spelling_of_a_secret_is_scrubbed(spelling: str) -> None:
    scrubber = Scrubber()
    scrubber.register_url(f"postgresql://u:{quote(PASSWORD, safe='')}@h:5432/d")
    scrubbed = scrubber.scrub(f"before {spelling} after")
    for fragment in heads_and_tails(PASSWORD):
        assert fragment not in scrubbed
    assert scrubbed.startswith("before ") and scrubbed.endswith(" after")


def test_short_prefixes_and_ordinary_text_survive() -> None:
    scrubber = Scrubber()
    scrubber.register(PASSWORD)
    text = "Zq8Kx... is a name; plain text stays, 127.0.0.1:5432/ledger too"
    assert scrubber.scrub(text) == text
    assert len(secret_forms(PASSWORD)) > 20


def test_throwaway_server_processes_get_no_operator_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:{PASSWORD}@h/d")
    monkeypatch.setenv("LEDGER_WEBHOOK_SECRET", WEBHOOK)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = child_environment()
    assert set(env) <= {"PATH", "LANG", "TZ", "TMPDIR"} | {k for k in env if k.startswith("LC_")}
    assert env["LC_ALL"] == "C.UTF-8" and env["PATH"] == os.environ["PATH"]
    try:
        server = start_ephemeral(EphemeralSettings(provider="local"))
    except EphemeralUnavailable as exc:
        missing_component("a local PostgreSQL server", str(exc))
    with server:
        assert isinstance(server, LocalServer)
        postmaster = Path(server.cluster.datadir, "postmaster.pid").read_text().split()[0]
        seen = Path(f"/proc/{postmaster}/environ").read_bytes().split(b"\0")
        watchdog = Path(f"/proc/{server.guard.pid}/environ").read_bytes().split(b"\0")
    for variables in (seen, watchdog):
        names = {v.split(b"=", 1)[0] for v in variables if v}
        assert not names & {b"DATABASE_URL", b"LEDGER_WEBHOOK_SECRET", b"PGPASSWORD"}
        assert not any(PASSWORD[:MIN_PREFIX].encode() in v for v in variables)
