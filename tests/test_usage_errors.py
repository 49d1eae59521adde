"""Usage errors stop the run with exit 4 before anything connects, each naming cause and fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ledger_rollout.config import ConfigError, load_config

from .support import RunPhase, write_config

USAGE = pytest.ExitCode.USAGE_ERROR


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, database="ledger")


def test_unknown_target(config: Path, run_phase: RunPhase) -> None:
    run = run_phase(config, "--target=stagin")
    assert run.result.ret == USAGE
    assert "unknown target 'stagin': use one of local, staging" in run.output


def test_staging_without_release_is_refused(config: Path, run_phase: RunPhase) -> None:
    run = run_phase(config, "--target=staging", url="postgresql://u@127.0.0.1/ledger", release=None)
    assert run.result.ret == USAGE
    assert "target 'staging' is a staging target: its sign-off must name the release" in run.output
    assert "pass --release=RC" in run.output
    assert not run.reports.exists()


def test_url_variable_unset(config: Path, run_phase: RunPhase) -> None:
    run = run_phase(config, "--target=staging", url=None)
    assert run.result.ret == USAGE
    assert "reads its database URL from $DATABASE_URL, which is unset" in run.output


def test_sqlite_is_not_a_reference(config: Path, run_phase: RunPhase) -> None:
    run = run_phase(config, "--target=staging", url="sqlite:///dev.db")
    assert run.result.ret == USAGE
    assert "points at sqlite, not PostgreSQL" in run.output


def test_unknown_phase(config: Path, run_phase: RunPhase) -> None:
    run = run_phase(config, phase="stg-migration")
    assert run.result.ret == USAGE
    assert "unknown --phase 'stg-migration': use one of stg-mig, stg-roll" in run.output


def test_selection_that_leaves_no_check_is_an_error(config: Path, run_phase: RunPhase) -> None:
    run = run_phase(config, "-k", "no_such_check")
    assert run.result.ret == USAGE
    assert "phase stg-mig selected no check" in run.output


def test_invalid_config_names_the_key(tmp_path: Path, run_phase: RunPhase) -> None:
    config = write_config(tmp_path, database="ledger", kind="prod")
    run = run_phase(config, "--target=staging")
    assert run.result.ret == USAGE
    assert "targets.staging.kind: must be one of ephemeral, staging, production" in run.output


def test_missing_config_file(tmp_path: Path, run_phase: RunPhase) -> None:
    run = run_phase(tmp_path / "nope.toml")
    assert run.result.ret == USAGE
    assert "nope.toml: <file>: cannot read" in run.output


def test_phase_from_ini_and_command_line_wins(
    config: Path, run_phase: RunPhase, pytester: pytest.Pytester
) -> None:
    # Collected only: the header shows what each option resolved to, nothing connects.
    pytester.makeini("[pytest]\nrollout_phase = prd-ga\nrollout_target = staging\n")
    run = run_phase(config, "--collect-only", url="postgresql://u@127.0.0.1:5432/ledger")
    assert run.result.ret == 0, run.output
    # The phase came from the command line (stg-mig), the target from the ini file.
    assert "ledger-rollout: phase=stg-mig target=staging (staging)" in run.output
    assert "test_upgrade_head" in run.output and "test_pilot_decided_go" not in run.output
    run = run_phase(config, "--collect-only", "--target=local")
    assert "ledger-rollout: phase=stg-mig target=local (ephemeral)" in run.output


@pytest.mark.parametrize(
    ("snippet", "key", "problem"),
    [
        ("[migrations]\nexpected_chain = ['a']\n", "migrations.alembic_ini", "required"),
        ("[migrations]\nalembic_ini = 'x.ini'\n", "migrations.alembic_ini", "no such file"),
        ("[bogus]\n", "bogus", "unknown key"),
        ("[migrations\n", "<file>", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, snippet: str, key: str, problem: str) -> None:
    path = tmp_path / "rollout.toml"
    path.write_text(snippet + "[targets.local]\nkind = 'ephemeral'\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.key == key
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("snippet", "key", "problem"),
    [
        ("[flags]\nsource = 'ldap'\n", "flags.source", "must be one of sql, http, file"),
        ("[flags]\nsource = 'http'\n", "flags.url", "required"),
        (
            "[flags]\nsource = 'file'\npath = 'f.json'\ntable = 'flags'\n",
            "flags.table",
            "applies to source = 'sql' only",
        ),
        (
            "[flags]\nquery = 'SELECT 1'\nkey_column = 'flag'\n",
            "flags.key_column",
            "give either query or the table keys, not both",
        ),
        ("[flags]\nenabled_column = ''\n", "flags.enabled_column", "non-empty string"),
        ("[tenants]\nid = 'client'\n", "tenants.id", "unknown key (known: table, id_column)"),
        ("[tenants]\ntable = 7\n", "tenants.table", "non-empty string"),
        ("[metrics.webhook_401]\nmax_ratio = 0.5\n", "metrics.webhook_401.max_ratio", ">= 1"),
        ("[metrics.webhook_401]\nwindow = 5\n", "metrics.webhook_401.window", "unknown key"),
        ("[smoke]\ndeposit = '-1'\n", "smoke.deposit", "positive amount"),
        ("[backfill]\nnothing_to_change = '('\n", "backfill.nothing_to_change", "regular"),
    ],
)
def test_phase_sections_name_the_key(tmp_path: Path, snippet: str, key: str, problem: str) -> None:
    path = write_config(tmp_path, database="ledger", extra=snippet)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.key == key
    assert problem in str(raised.value)


def test_flag_and_tenant_tables_are_configured(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        database="ledger",
        extra="[flags]\ntable = 'rollout_flags'\nkey_column = 'flag'\n"
        "[tenants]\ntable = 'clients'\nid_column = 'client'\n",
    )
    config = load_config(path)
    table = config.flags.source.table
    assert (table.table, table.key, table.tenant, table.enabled, table.changed_at) == (
        "rollout_flags",
        "flag",
        "tenant_id",
        "enabled",
        "changed_at",
    )
    assert (config.tenants.tenants, config.tenants.tenant_id) == ("clients", "client")
    query = "SELECT key, tenant_id AS tenant, enabled, changed_at FROM feature_flags"
    path = write_config(tmp_path, database="ledger", extra=f'[flags]\nquery = "{query}; "\n')
    assert load_config(path).flags.source.query == query  # PRD checks embed it


def test_baseline_must_be_in_the_chain(tmp_path: Path) -> None:
    path = write_config(tmp_path, database="ledger")
    path.write_text(
        path.read_text().replace("expected_chain", "baseline = 'zzz'\nexpected_chain", 1)
    )
    with pytest.raises(ConfigError, match=r"migrations\.baseline: 'zzz' is not in expected_chain"):
        load_config(path)


def test_shipped_config_loads_with_three_targets() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "rollout.toml")
    assert {name: t.kind for name, t in config.targets.items()} == {
        "local": "ephemeral",
        "staging": "staging",
        "prod": "production",
    }
    assert config.migrations.baseline == config.migrations.expected_chain[0]
    assert config.unique[0].name == "uq_recon_provider_event_type"


@pytest.mark.parametrize(
    ("snippet", "key", "problem"),
    [
        ("[metrics.webhook_401]\nmax_ratio = nan\n", "metrics.webhook_401.max_ratio", "finite"),
        ("[metrics.decision]\nmax_ratio = nan\n", "metrics.decision.max_ratio", "finite"),
        ("[metrics.decision]\nmax_ratio = inf\n", "metrics.decision.max_ratio", "finite"),
        ("[metrics.webhook_401]\nalpha = -inf\n", "metrics.webhook_401.alpha", "finite"),
        ("[metrics.webhook_401]\nmin_requests = nan\n", "metrics.webhook_401.min_requests", "1.."),
        ("[metrics.decision]\nmin_requests = inf\n", "metrics.decision.min_requests", "1.."),
        ("[metrics.decision]\nmin_requests = -5\n", "metrics.decision.min_requests", "1.."),
        (
            "[metrics.webhook_401]\nbefore_window_s = 1000000000000000000\n",
            "metrics.webhook_401.before_window_s",
            "1..31622400",
        ),
        ("[metrics.decision]\nwindow_s = 1e18\n", "metrics.decision.window_s", "1..31622400"),
        (
            "[session]\nstatement_timeout_ms = 1000000000000\n",
            "session.statement_timeout_ms",
            "1..2147483647",
        ),
        ("[session]\nlock_timeout_ms = -1\n", "session.lock_timeout_ms", "1..2147483647"),
        ("[session]\nphase_lock_wait_ms = 0\n", "session.phase_lock_wait_ms", "1.."),
        (
            "[session]\nmigration_lock_wait_ms = 500\n",
            "session.migration_lock_wait_ms",
            "renamed: write phase_lock_wait_ms",
        ),
        ("[pilot.risk]\nvolume_days = 99999999\n", "pilot.risk.volume_days", "1..36500"),
        ("[metrics.decision]\nmismatch_max_count = -1\n", "metrics.decision.mismatch_max", "0.."),
        ("[ga]\nmin_share = nan\n", "ga.min_share", "finite"),
        ("[flags]\nsource = 'http'\nurl = 'http://h:99999/f'\n", "flags.url", "1..65535"),
        ("[flags]\nsource = 'http'\nurl = 'http://h:0/f'\n", "flags.url", "1..65535"),
    ],
)
def test_impossible_numbers_name_the_key_and_the_range(
    tmp_path: Path, snippet: str, key: str, problem: str
) -> None:
    path = write_config(tmp_path, database="ledger", extra=snippet)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.key.startswith(key)
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("service_url = 'http://127.0.0.1:99999'", "targets.staging.service_url"),
        ("prometheus_url = 'http://127.0.0.1:65536'", "targets.staging.prometheus_url"),
    ],
)
def test_ports_in_target_urls_are_checked(tmp_path: Path, setting: str, key: str) -> None:
    path = write_config(tmp_path, database="ledger", target_extra=setting)
    with pytest.raises(ConfigError, match=rf"{key}: .*1\.\.65535"):
        load_config(path)


def test_impossible_number_is_exit_4(tmp_path: Path, run_phase: RunPhase) -> None:
    path = write_config(tmp_path, database="ledger", extra="[metrics.decision]\nmax_ratio = nan\n")
    run = run_phase(path, phase="stg-mig", url="postgresql://u@127.0.0.1/ledger")
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "metrics.decision.max_ratio: must be a finite number, not nan" in run.output


def test_database_url_with_an_impossible_port_is_a_usage_error(
    config: Path, run_phase: RunPhase
) -> None:
    run = run_phase(config, "--target=staging", url="postgresql://u@127.0.0.1:99999/ledger")
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "$DATABASE_URL" in run.output and "1..65535" in run.output


def test_default_config_is_found_where_pytest_runs_even_when_a_value_became_the_rootdir(
    tmp_path: Path,
) -> None:
    """`--signoff-dir /some/dir` (a space): pytest takes the value for a path and makes it the
    rootdir before the plugin's options exist. The default config is still the one in the
    folder pytest runs from; where none is, every place looked at is named."""
    work, elsewhere = tmp_path / "work", tmp_path / "reports"
    work.mkdir()
    elsewhere.mkdir()
    write_config(work, database="ledger")
    command = [sys.executable, "-m", "pytest", "--phase=stg-mig", "--collect-only", "-q"]
    found = subprocess.run(
        [*command, "--signoff-dir", str(elsewhere)], cwd=work, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stdout + found.stderr
    assert "test_upgrade_head" in found.stdout
    (work / "rollout.toml").unlink()
    missing = subprocess.run(
        [*command, "--signoff-dir", str(elsewhere)], cwd=work, capture_output=True, text=True
    )
    assert missing.returncode == USAGE
    # The invocation folder, then the rootdir pytest chose (here, above both folders).
    assert f"no rollout config: looked for {work / 'rollout.toml'} and {tmp_path}" in (
        missing.stderr
    )
