"""STG-MIG on real Alembic histories installed from PyPI (pinned in pyproject's corpus extra):
optuna 4.1.0 (10 revisions; its own alembic.ini with a relative script_location, its own env.py
that builds its own engine; data migrations) and mlflow-skinny 3.1.0 (30 revisions; its own
env.py; a first revision that alters tables MLflow makes with create_all: a base schema).

Each scenario runs the phase end to end against a real Postgres. The history walks are cached
per process by the scripts' hash, so the scenarios of one history share one walk."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

# Imported before any in-process pytester run, which drops the modules a run imports: an ORM
# re-imported afterwards no longer matches SQLAlchemy's (KeyError: MANYTOONE), and MLflow's
# importlib_metadata backport deletes the stdlib's distribution finder when first imported,
# so after pytester's restore of sys.meta_path no finder is left and the plugin is not found.
import importlib_metadata  # noqa: F401
import mlflow.store.model_registry.dbmodels.models
import mlflow.store.tracking.dbmodels.initial_models
import mlflow.store.tracking.dbmodels.models  # noqa: F401
import optuna
import optuna.storages._rdb.models
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from pytest_ledger_rollout.checks.forensics.history import dump_schema
from pytest_ledger_rollout.checks.migrations import AlembicProject, EnvPyError
from pytest_ledger_rollout.config import ConfigError, load_config
from pytest_ledger_rollout.targets.postgres import EphemeralServer, EphemeralSettings, local

from .support import REPO, PhaseRun, RunPhase, ScenarioDb, cloned_database

OPTUNA_INI = Path(optuna.__file__).parent / "storages" / "_rdb" / "alembic.ini"
OPTUNA_HEAD = "v3.2.0.a"
MLFLOW = REPO / "tests" / "projects" / "mlflow"
MLFLOW_BASE = f"{MLFLOW / 'base_schema.py'}:create"
MLFLOW_FIRST, MLFLOW_HEAD = "451aebb31d03", "6953534de441"


# These histories' projects have no app checkout to run `alembic current` in: the staging runs
# record that as a reviewed exception of step 1.1, as a team without an app host would.
NO_APP_HOST_WAIVER = Path(__file__).parent / "projects" / "no_app_host_waiver.yml"
NO_APP_HOST = f"--waivers={NO_APP_HOST_WAIVER}"


def rollout_config(
    folder: Path,
    alembic_ini: Path,
    chain: tuple[str, ...],
    unique: tuple[str, tuple[str, ...]],
    *,
    database: str = "unused",
    migrations_extra: str = "",
    extra: str = "",
) -> Path:
    columns = ", ".join(f'"{c}"' for c in unique[1])
    path = folder / "rollout.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [migrations]
            alembic_ini = "{alembic_ini}"
            expected_chain = [{", ".join(f'"{rev}"' for rev in chain)}]
            {migrations_extra}

            [[schema.unique]]
            table = "{unique[0]}"
            columns = [{columns}]

            [targets.local]
            kind = "ephemeral"
            provider = "local"

            [targets.staging]
            kind = "staging"
            database_url_env = "DATABASE_URL"
            expect = {{ host = "127.0.0.1", database = "{database}" }}
            """
        )
        + extra
    )
    return path


@pytest.fixture
def empty_db(admin_engine: Engine, pg_server: EphemeralServer) -> Iterator[ScenarioDb]:
    with cloned_database(admin_engine, "template0", pg_server.url, "real") as db:
        yield db


def at_revision(db: ScenarioDb, ini: Path, revision: str, base_schema: str | None = None) -> None:
    project = AlembicProject(ini, base_schema)
    with db.engine.connect() as connection:
        project.create_base_schema(connection)
        project.upgrade(connection, revision)


def outcomes(run: PhaseRun) -> dict[str, str]:
    return {step["id"]: step["outcome"] for step in run.json()["steps"]}


OPTUNA_UNIQUE = ("trial_params", ("trial_id", "param_name"))


def test_optuna_embedded_default_passes(tmp_path: Path, run_phase: RunPhase) -> None:
    config = rollout_config(tmp_path, OPTUNA_INI, ("v3.0.0.d", OPTUNA_HEAD), OPTUNA_UNIQUE)
    run = run_phase(config)
    assert run.result.ret == 0, run.output
    assert run.json()["verdict"] == "PASS"
    upgrade = str(run.step("1.2"))
    # optuna's env.py builds its own engine from sqlalchemy.url: said, not silently passed.
    assert "env.py ran the migrations on a connection of its own" in upgrade


def test_optuna_staging_one_revision_behind_passes(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    at_revision(empty_db, OPTUNA_INI, "v3.0.0.d")
    config = rollout_config(
        tmp_path, OPTUNA_INI, ("v3.0.0.d", OPTUNA_HEAD), OPTUNA_UNIQUE, database=empty_db.name
    )
    run = run_phase(config, "--target=staging", NO_APP_HOST, url=empty_db.url)
    assert run.result.ret == 0, run.output
    assert run.json()["verdict"] == "PASS"
    assert empty_db.scalar("SELECT version_num FROM alembic_version") == OPTUNA_HEAD
    assert "upgraded v3.0.0.d -> v3.2.0.a (1 revision(s))" in str(run.step("1.2"))


def test_optuna_data_migrations_pending_are_named_and_the_rest_linted(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    # Old failure: the lock pre-flight rendered the whole range offline and died on the first
    # revision that reads data, naming none ("'NoneType' object has no attribute ...").
    at_revision(empty_db, OPTUNA_INI, "v2.6.0.a")
    history = AlembicProject(OPTUNA_INI).chain_to(OPTUNA_HEAD)
    release = history[history.index("v2.6.0.a") :]  # the chain this release ends with
    config = rollout_config(tmp_path, OPTUNA_INI, release, OPTUNA_UNIQUE, database=empty_db.name)
    run = run_phase(config, "--target=staging", NO_APP_HOST, url=empty_db.url)
    assert outcomes(run)["1.1"] == "waived", run.output  # only the app-host check, waived
    step = str(run.step("1.2"))
    assert outcomes(run)["1.2"] == "passed", run.output
    assert "v3.0.0.a reads data; its statements were not linted" in step
    assert "lock finding(s), none on a large table" in step
    # A real finding in optuna 4.1.0: v3.0.0.c's downgrade() references a removed enum.
    assert outcomes(run)["1.4"] == "failed"
    assert "v3.0.0.c: downgrade fails: revision v3.0.0.c: AttributeError" in run.output


@pytest.fixture
def optuna_with_team_revisions(tmp_path: Path) -> Path:
    """optuna's project plus two revisions a team would add: an index built CONCURRENTLY in
    autocommit_block(), and a new column under a new UNIQUE."""
    project = tmp_path / "optuna_project"
    shutil.copytree(OPTUNA_INI.parent / "alembic", project / "alembic")
    shutil.copy(OPTUNA_INI, project / "alembic.ini")
    versions = project / "alembic" / "versions"
    (versions / "t1_concurrent.py").write_text(
        textwrap.dedent(
            f"""
            from alembic import op

            revision = "t1_concurrent"
            down_revision = "{OPTUNA_HEAD}"


            def upgrade():
                with op.get_context().autocommit_block():
                    op.create_index(
                        "ix_trials_state", "trials", ["state"], postgresql_concurrently=True
                    )


            def downgrade():
                with op.get_context().autocommit_block():
                    op.drop_index("ix_trials_state", "trials", postgresql_concurrently=True)
            """
        )
    )
    (versions / "t2_shard.py").write_text(
        textwrap.dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            revision = "t2_shard"
            down_revision = "t1_concurrent"


            def upgrade():
                op.add_column("trials", sa.Column("shard", sa.Integer(), nullable=True))
                op.create_unique_constraint(
                    "uq_trials_study_number_shard", "trials", ["study_id", "number", "shard"]
                )


            def downgrade():
                op.drop_constraint("uq_trials_study_number_shard", "trials")
                op.drop_column("trials", "shard")
            """
        )
    )
    return project / "alembic.ini"


def test_concurrent_index_and_pending_unique_column_pass(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, optuna_with_team_revisions: Path
) -> None:
    # Old failures: `assert self._transaction is not None` in autocommit_block() (Alembic was
    # handed a connection inside the transaction `alembic current` autobegan), and "trials
    # lacks column(s) shard of the UNIQUE to be added" from the duplicates pre-flight.
    ini = optuna_with_team_revisions
    at_revision(empty_db, ini, OPTUNA_HEAD)
    empty_db.execute(
        "INSERT INTO studies (study_id, study_name) VALUES (1, 's')",
        "INSERT INTO trials (trial_id, number, study_id, state) VALUES (1, 0, 1, 'COMPLETE'),"
        " (2, 0, 1, 'COMPLETE')",
    )
    config = rollout_config(
        tmp_path,
        ini,
        (OPTUNA_HEAD, "t1_concurrent", "t2_shard"),
        ("trials", ("study_id", "number", "shard")),
        database=empty_db.name,
    )
    run = run_phase(config, "--target=staging", NO_APP_HOST, url=empty_db.url)
    assert run.result.ret == 0, run.output
    assert run.json()["verdict"] == "PASS"
    assert "shard (added by t2_shard) is new and has no default" in str(run.step("1.2"))
    assert (
        empty_db.scalar(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_trials_state'::regclass"
        )
        is True
    )


def test_session_limits_reach_an_env_py_that_builds_its_own_engine(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    # Old failure: optuna's env.py connects with sqlalchemy.url alone, so the upgrade waited
    # behind another session's lock with no lock_timeout, and the run passed when it ended.
    at_revision(empty_db, OPTUNA_INI, "v3.0.0.d")
    config = rollout_config(
        tmp_path,
        OPTUNA_INI,
        ("v3.0.0.d", OPTUNA_HEAD),
        OPTUNA_UNIQUE,
        database=empty_db.name,
        extra="[session]\nlock_timeout_ms = 300\n",
    )
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with empty_db.engine.begin() as connection:
            connection.execute(text("LOCK TABLE trials IN ROW EXCLUSIVE MODE"))
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        run = run_phase(config, "--target=staging", NO_APP_HOST, url=empty_db.url)
    finally:
        release.set()
        holder.join()
    assert outcomes(run)["1.2"] == "failed"
    assert "`alembic upgrade head` failed in revision v3.2.0.a" in run.output
    assert "lock timeout" in run.output
    assert "statement: CREATE INDEX trials_study_id_key" in run.output


MLFLOW_UNIQUE = ("experiments", ("name",))


def test_mlflow_without_base_schema_is_one_structured_failure(
    tmp_path: Path, run_phase: RunPhase
) -> None:
    # Old failure: raw `relation "metrics" does not exist`, INTERNALERROR, exit 3.
    config = rollout_config(tmp_path, MLFLOW / "alembic.ini", (MLFLOW_HEAD,), MLFLOW_UNIQUE)
    run = run_phase(config)
    assert run.result.ret == 1, run.output
    assert "INTERNALERROR" not in run.output
    assert f"cannot be replayed on a fresh database: revision {MLFLOW_FIRST} fails" in run.output
    assert 'relation "metrics" does not exist' in run.output
    assert "[migrations] base_schema" in run.output and "pg_dump --schema-only" in run.output


def test_mlflow_staging_one_revision_behind_upgrades_and_names_its_missing_downgrades(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    at_revision(empty_db, MLFLOW / "alembic.ini", "400f98739977", MLFLOW_BASE)
    config = rollout_config(
        tmp_path,
        MLFLOW / "alembic.ini",
        ("400f98739977", MLFLOW_HEAD),
        MLFLOW_UNIQUE,
        database=empty_db.name,
        migrations_extra=f'base_schema = "{MLFLOW_BASE}"',
    )
    run = run_phase(config, "--target=staging", NO_APP_HOST, url=empty_db.url)
    steps = outcomes(run)
    assert steps["1.1"] == "waived" and steps["1.2"] == steps["1.3"] == "passed", run.output
    assert "schema matches the claimed revision 400f98739977" in str(run.step("1.2"))
    # MLflow's downgrade() of its head is `pass`: no rollback, and the walk proves it.
    assert steps["1.4"] == "failed"
    assert f"{MLFLOW_HEAD}: downgrade does not restore 400f98739977" in run.output


def test_relative_script_location_resolves_against_the_ini(
    tmp_path: Path, run_phase: RunPhase
) -> None:
    # Old failure: optuna's `script_location = alembic` was looked up in the current
    # directory: "Path doesn't exist ... use the 'init' command" on every check.
    assert AlembicProject(OPTUNA_INI).heads() == (OPTUNA_HEAD,)
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = migrations\n")
    config = rollout_config(tmp_path, ini, ("a",), OPTUNA_UNIQUE)
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert raised.value.key == "migrations.alembic_ini"
    assert f"looked up at {Path.cwd() / 'migrations'}" in str(raised.value)
    assert f"and {tmp_path / 'migrations'} (the ini's folder)" in str(raised.value)
    assert "%(here)s" in str(raised.value)
    run = run_phase(config)
    assert run.result.ret == 4  # one usage error, not a failure on every check
    assert "script_location 'migrations'" in run.output


def test_an_env_py_that_cannot_run_is_named(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase, optuna_with_team_revisions: Path
) -> None:
    # Old failure: the raw exception, no word of env.py (an INTERNALERROR on the embedded path).
    env_py = optuna_with_team_revisions.parent / "alembic" / "env.py"
    env_py.write_text("raise RuntimeError('no running event loop')\n")
    with empty_db.engine.connect() as connection, pytest.raises(EnvPyError) as raised:
        AlembicProject(optuna_with_team_revisions).upgrade(connection)
    assert str(raised.value).startswith(f"{env_py} raised RuntimeError: no running event loop")
    config = rollout_config(tmp_path, optuna_with_team_revisions, ("t2_shard",), OPTUNA_UNIQUE)
    run = run_phase(config)
    assert run.result.ret == 1
    assert "INTERNALERROR" not in run.output
    assert "env.py could not be run" in run.output
    assert f"{env_py} raised RuntimeError: no running event loop" in run.output


def test_config_without_a_unique_is_a_usage_error(tmp_path: Path) -> None:
    config = rollout_config(tmp_path, OPTUNA_INI, (OPTUNA_HEAD,), OPTUNA_UNIQUE)
    config.write_text(config.read_text().replace("[[schema.unique]]", "[other]"))
    config.write_text(
        "\n".join(
            line
            for line in config.read_text().splitlines()
            if not line.startswith(("[other]", "table =", "columns ="))
        )
    )
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert raised.value.key == "schema.unique"


def check_record(run: PhaseRun, step: str, check: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in run.step(step)["checks"] if c["check"] == check)
    return found


def mlflow_staging_without_base_schema(db: ScenarioDb, folder: Path) -> Path:
    """A staging database one revision behind MLflow's head (made as MLflow makes it: its
    create_all, then the revisions), checked with a config that declares no base_schema."""
    at_revision(db, MLFLOW / "alembic.ini", "400f98739977", MLFLOW_BASE)
    return rollout_config(
        folder, MLFLOW / "alembic.ini", ("400f98739977", MLFLOW_HEAD), MLFLOW_UNIQUE,
        database=db.name,
    )  # fmt: skip


def test_mlflow_staging_without_base_schema_fails_once_and_still_upgrades_through_a_copy(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    # Old failures: the walk's raw `relation "metrics" does not exist` as an INTERNALERROR;
    # then the state pre-flight failed with it and held the upgrade back for good.
    config = mlflow_staging_without_base_schema(empty_db, tmp_path)
    run = run_phase(config, "--target=staging", NO_APP_HOST, url=empty_db.url)
    assert "INTERNALERROR" not in run.output
    assert run.result.ret == 1, run.output
    assert run.json()["verdict"] == "FAIL"
    # One check reports the replay failure, structured, in step 1.2 (no waiver covers it);
    # 1.1 is only waived for the app host, so a passed 1.1 still precedes the upgrade.
    replay = check_record(run, "1.2", "test_history_replays_on_a_fresh_database")
    assert replay["outcome"] == "failed"
    assert replay["failure"]["title"].endswith(f"revision {MLFLOW_FIRST} fails")
    assert 'relation "metrics" does not exist' in replay["failure"]["seen"]
    assert "base_schema" in replay["failure"]["remedy"]
    assert "pg_dump --schema-only" in replay["failure"]["remedy"]
    assert outcomes(run)["1.1"] == "waived" and outcomes(run)["1.2"] == "failed"
    assert sum(f"revision {MLFLOW_FIRST} fails" in str(step) for step in run.json()["steps"]) == 1
    # The state pre-flight checked the pending revision on a copy of staging's schema, and the
    # upgrade ran on staging and passed.
    state = check_record(run, "1.2", "test_schema_matches_claimed_revision")
    assert state["outcome"] == "passed", run.output
    assert "apply cleanly to a schema-only copy of the target" in state["summary"]
    assert "pg_dump --schema-only" in str(state["evidence"])
    upgrade = check_record(run, "1.2", "test_upgrade_head")
    assert upgrade["outcome"] == "passed"
    assert f"upgraded 400f98739977 -> {MLFLOW_HEAD}" in upgrade["summary"]
    assert outcomes(run)["1.3"] == "passed"
    assert empty_db.scalar("SELECT version_num FROM alembic_version") == MLFLOW_HEAD
    # 1.4 ran and decided, on the copy's proven downgrades: MLflow's head downgrade is `pass`.
    assert outcomes(run)["1.4"] == "failed"
    assert f"{MLFLOW_HEAD}: downgrade does not restore 400f98739977" in run.output
    # The target's password reached no output.
    password = make_url(empty_db.url).password
    assert password and password not in run.output


def test_mlflow_staging_without_base_schema_copy_names_a_revision_that_will_fail(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    # The seeded fault: staging lacks the table the pending revision alters. The copy shows
    # it before the target is touched.
    config = mlflow_staging_without_base_schema(empty_db, tmp_path)
    empty_db.execute("DROP TABLE inputs CASCADE")
    run = run_phase(config, "--target=staging", NO_APP_HOST, url=empty_db.url)
    assert "INTERNALERROR" not in run.output
    assert run.json()["verdict"] == "FAIL"
    state = check_record(run, "1.2", "test_schema_matches_claimed_revision")
    assert state["outcome"] == "failed", run.output
    title = state["failure"]["title"]
    assert title == f"Pending revision {MLFLOW_HEAD} fails on a copy of the target's schema"
    assert 'relation "inputs" does not exist' in state["failure"]["seen"]
    upgrade = check_record(run, "1.2", "test_upgrade_head")
    assert upgrade["summary"].startswith("not attempted: preflight"), upgrade
    assert empty_db.scalar("SELECT version_num FROM alembic_version") == "400f98739977"


def test_mlflow_staging_at_head_without_base_schema_cannot_check_drift(
    empty_db: ScenarioDb, tmp_path: Path, run_phase: RunPhase
) -> None:
    # Nothing pending: the copy would only be the target itself, so drift at head has nothing
    # honest to be compared with and fails closed (it does not pass against its own copy).
    config = mlflow_staging_without_base_schema(empty_db, tmp_path)
    at_revision(empty_db, MLFLOW / "alembic.ini", MLFLOW_HEAD)
    run = run_phase(config, "--target=staging", NO_APP_HOST, url=empty_db.url)
    assert "INTERNALERROR" not in run.output
    assert run.json()["verdict"] == "FAIL"
    assert check_record(run, "1.2", "test_upgrade_head")["summary"].startswith("already at head")
    drift = check_record(run, "1.3", "test_no_drift_at_head")
    assert drift["outcome"] != "passed"
    assert drift["failure"]["title"].startswith("No fingerprint to compare with")


def test_the_schema_copy_keeps_the_password_off_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen["argv"], seen["env"] = argv, kwargs["env"]
        seen["passfile"] = Path(kwargs["env"]["PGPASSFILE"]).read_text()
        return subprocess.CompletedProcess(argv, 0, "-- dump\n", "")

    monkeypatch.setattr(local, "find_client", lambda tool, settings: f"/pg/bin/{tool}")
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("PGPASSWORD", "inherited-secret")
    secret = "s3cr:et\\pw@x"
    url = (
        f"postgresql+psycopg://ledger:{quote(secret, safe='')}@db.internal:5433/ledger"
        "?sslmode=require&host=/run/pg"  # libpq parameters in the query override the authority
    )
    assert dump_schema(url, EphemeralSettings(), 2000) == "-- dump\n"
    assert not any(secret in arg or "s3cr" in arg for arg in seen["argv"])
    assert "PGPASSWORD" not in seen["env"]
    assert seen["passfile"] == "*:*:*:*:s3cr\\:et\\\\pw@x\n"
    assert not Path(seen["env"]["PGPASSFILE"]).exists()  # removed after the dump
    conninfo = seen["argv"][seen["argv"].index("--dbname") + 1]
    assert "default_transaction_read_only=on" in conninfo
    assert "host=/run/pg" in conninfo and "sslmode=require" in conninfo and "port=5433" in conninfo
    assert "--schema-only" in seen["argv"] and "--lock-wait-timeout=2000" in seen["argv"]
