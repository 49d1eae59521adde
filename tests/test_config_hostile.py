"""Hostile values in every table of the rollout config: each one is a ConfigError (a usage
error) naming the dotted key, on one line, and no secret of the file appears in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ledger_rollout.config import ConfigError, load_config

from .support import write_config

HUGE = "1" + "0" * 400  # a TOML integer no float holds
NON_FINITE = ["nan", "inf", "-inf", "+nan", "1e309", "-1e309"]
NOT_A_NUMBER = ["true", "'1'", "[1]", "{ a = 1 }", "1979-05-27"]
NOT_TEXT = ["''", "' '", "1", "true", "[]", "nan", "{ a = 'x' }"]
NOT_TEXTS = ["''", "['']", "[1]", "1", "[[]]", "{ a = 'x' }"]
INTEGERS = [*NON_FINITE, *NOT_A_NUMBER, HUGE, f"-{HUGE}", "-1", "1.5", "1e3"]
POSITIVE = [*INTEGERS, "0"]
NUMBERS = [*NON_FINITE, *NOT_A_NUMBER, HUGE, f"-{HUGE}"]
AMOUNTS = [*NON_FINITE, HUGE, f"-{HUGE}", "-1", "0", "'x'", "true", "'1e999999'", "'-0.01'"]
BOOLEANS = ["1", "'true'", "nan", "[]"]

KEYS: dict[str, list[tuple[str, list[str]]]] = {
    "session": [
        ("statement_timeout_ms", POSITIVE),
        ("lock_timeout_ms", POSITIVE),
        ("phase_lock_wait_ms", POSITIVE),
    ],
    "ledger": [("wallets", NOT_TEXT), ("worst_offenders", POSITIVE)],
    "flags": [("source", NOT_TEXT), ("table", NOT_TEXT), ("order", NOT_TEXTS)],
    "tenants": [("table", NOT_TEXT), ("id_column", NOT_TEXT)],
    "backfill": [("dry_run_command", NOT_TEXT), ("nothing_to_change", NOT_TEXT)],
    "metrics.webhook_401": [
        ("min_requests", POSITIVE),
        ("max_ratio", [*NUMBERS, "0.5", "-1"]),
        ("alpha", [*NUMBERS, "0", "1.5"]),
        ("max_after_share", [*NUMBERS, "-0.1", "1.1"]),
        ("before_window_s", POSITIVE),
        ("after_window_s", [*POSITIVE, "31622401"]),
        ("unauthorized_query", NOT_TEXT),
        ("unauthorized_empty_means_zero", BOOLEANS),
    ],
    "metrics.decision": [
        ("window_s", POSITIVE),
        ("baseline_window_s", POSITIVE),
        ("min_requests", POSITIVE),
        ("max_ratio", [*NUMBERS, "0.5", "-1", "0"]),
        ("alpha", [*NUMBERS, "0", "-0.5", "1.5"]),
        ("mismatch_max_count", INTEGERS),
        ("webhook_401_action", [*NOT_TEXT, "'GO'"]),
    ],
    "smoke": [("tenant", NOT_TEXT), ("deposit", AMOUNTS), ("withdrawal", AMOUNTS)],
    "pilot": [("tenants", NOT_TEXTS), ("dry_run", BOOLEANS)],
    "pilot.risk": [
        ("min_wallets", POSITIVE),
        ("max_wallets", POSITIVE),
        ("volume_days", [*POSITIVE, "36501"]),
        ("max_open_findings", INTEGERS),
        ("max_withdrawal_volume", AMOUNTS),
        ("volume_statuses", NOT_TEXTS),
    ],
    "ga": [
        ("waves", ["[[]]", "[['']]", "['t-1']", "1"]),
        ("rollback_flags", NOT_TEXTS),
        ("min_share", [*NUMBERS, "0", "-0.5", "1.5"]),
    ],
    "forensics": [
        ("ignore_tables", NOT_TEXTS),
        ("snapshot", NOT_TEXT),
        ("large_table_rows", POSITIVE),
        ("large_table_bytes", POSITIVE),
        ("duplicate_groups_shown", POSITIVE),
    ],
    "signoff": [("signing_key", NOT_TEXT)],
}
CASES = [
    pytest.param(table, key, value, id=f"{table}.{key}={value[:12]}")
    for table, keys in KEYS.items()
    for key, values in keys
    for value in values
]


def _refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: {raised.value.key}: ")
    return raised.value


@pytest.mark.parametrize(("table", "key", "value"), CASES)
def test_hostile_value_is_a_usage_error_naming_the_key(
    tmp_path: Path, table: str, key: str, value: str
) -> None:
    error = _refused(
        write_config(tmp_path, database="ledger", extra=f"[{table}]\n{key} = {value}\n")
    )
    assert error.key == f"{table}.{key}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("webhook_secret_env", "1"),
        ("service_url", "nan"),
        ("service_url", "'http://h:99999/'"),
        ("prometheus_url", "''"),
        ("require_read_only_role", "'yes'"),
        ("webhook_secret_env", "' '"),
    ],
)
def test_hostile_target_value_names_the_key(tmp_path: Path, key: str, value: str) -> None:
    path = write_config(tmp_path, database="ledger", target_extra=f"{key} = {value}")
    assert _refused(path).key == f"targets.staging.{key}"


@pytest.mark.parametrize(
    ("extra", "target_extra", "key"),
    [
        ("[session]\nbogus = 1\n", "", "session.bogus"),
        ("[ledger]\nbogus = 1\n", "", "ledger.bogus"),
        ("[flags]\nbogus = 1\n", "", "flags.bogus"),
        ("[flags.steps]\n'9.9' = ['x']\n", "", "flags.steps.9.9"),
        ("[tenants]\nbogus = 1\n", "", "tenants.bogus"),
        ("[backfill]\nbogus = 1\n", "", "backfill.bogus"),
        ("[metrics]\nbogus = 1\n", "", "metrics.bogus"),
        ("[metrics.webhook_401]\nbogus = 1\n", "", "metrics.webhook_401.bogus"),
        ("[metrics.decision]\nbogus = 1\n", "", "metrics.decision.bogus"),
        ("[smoke]\nbogus = 1\n", "", "smoke.bogus"),
        ("[pilot]\nbogus = 1\n", "", "pilot.bogus"),
        ("[pilot.risk]\nbogus = 1\n", "", "pilot.risk.bogus"),
        ("[ga]\nbogus = 1\n", "", "ga.bogus"),
        ("[forensics]\nbogus = 1\n", "", "forensics.bogus"),
        ("[signoff]\nbogus = 1\n", "", "signoff.bogus"),
        ("[schema]\nbogus = 1\n", "", "schema.bogus"),
        (
            "[[schema.unique]]\ntable = 't'\ncolumns = ['c']\nbogus = 1\n",
            "",
            "schema.unique[1].bogus",
        ),
        ("", "bogus = 1", "targets.staging.bogus"),
        (
            "[targets.prod]\nkind = 'production'\nexpect = { host = 'h', database = 'd', x = 1 }\n",
            "",
            "targets.prod.expect.x",
        ),
        ("[targets.other]\nkind = 'ephemeral'\nexpect = 1\n", "", "targets.other.expect"),
    ],
)
def test_unknown_key_in_every_table_is_named(
    tmp_path: Path, extra: str, target_extra: str, key: str
) -> None:
    path = write_config(tmp_path, database="ledger", extra=extra, target_extra=target_extra)
    error = _refused(path)
    assert error.key == key and "unknown" in str(error)


@pytest.mark.parametrize("table", ["session", "ledger", "flags", "metrics", "pilot", "ga"])
def test_a_section_that_is_no_table_is_named(tmp_path: Path, table: str) -> None:
    path = write_config(tmp_path, database="ledger")
    path.write_text(f"{table} = 5\n" + path.read_text())
    assert _refused(path).key == table


@pytest.mark.parametrize(
    ("flags", "key", "owner"),
    [
        ("url = 'http://h/flags'", "flags.url", "http"),
        ("source = 'file'\npath = 'f.json'\nurl = 'http://h/flags'", "flags.url", "http"),
        ("path = 'flags.json'", "flags.path", "file"),
        ("source = 'http'\nurl = 'http://h/flags'\npath = 'f.json'", "flags.path", "file"),
    ],
)
def test_a_key_of_another_flag_source_is_refused(
    tmp_path: Path, flags: str, key: str, owner: str
) -> None:
    """Left silently unused, it would make the reader believe the flags come from there."""
    error = _refused(write_config(tmp_path, database="ledger", extra=f"[flags]\n{flags}\n"))
    assert error.key == key and f"applies to source = '{owner}' only" in str(error)


def test_a_unique_spec_needs_columns(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        database="ledger",
        extra="[[schema.unique]]\ntable = 't'\ncolumns = []\n",
    )
    error = _refused(path)
    assert error.key == "schema.unique[1].columns"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[flags]\norder = []\n", "flags.order"),
        ("[ledger]\nbackfill_entry_types = []\n", "ledger.backfill_entry_types"),
        ("[pilot.risk]\nvolume_statuses = []\n", "pilot.risk.volume_statuses"),
    ],
)
def test_an_empty_list_where_the_default_names_some_is_refused(
    tmp_path: Path, extra: str, key: str
) -> None:
    """Empty, it silently meant the default: a reader would believe nothing is checked."""
    error = _refused(write_config(tmp_path, database="ledger", extra=extra))
    assert error.key == key and "must name at least one (leave the key out for [" in str(error)


def test_min_wallets_above_max_wallets_is_refused(tmp_path: Path) -> None:
    extra = "[pilot.risk]\nmin_wallets = 500\nmax_wallets = 100\n"
    error = _refused(write_config(tmp_path, database="ledger", extra=extra))
    assert error.key == "pilot.risk.min_wallets"
    assert "500 is above max_wallets (100): no tenant could be a pilot" in str(error)


def test_steps_not_given_keep_their_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, database="ledger", extra="[flags.steps]\n'2.3' = ['sig']\n")
    steps = load_config(path).flags.steps
    assert steps["2.3"] == ("sig",)
    assert steps["2.1"] == ("ledger_shadow_write", "ledger_balance_mismatch_log")
    assert steps["2.4"] == ("ledger_enforce_balance",)


PASSWORD = "hunter2-Sup3rSecret"


@pytest.mark.parametrize(
    ("extra", "target_extra"),
    [
        ("", f"service_url = 'http://svc:{PASSWORD}@127.0.0.1:99999/'"),
        ("", f"prometheus_url = 'http://u:{PASSWORD}@[::1/'"),
        ("", f"prometheus_url = 'http://u:{PASSWORD}@h:port/'"),
        ("", f"service_url = 'http://u:{PASSWORD}@h/'\nrequire_read_only_role = nan"),
        ("", f"service_url = 'http://u:{PASSWORD}@h/'\nbogus = '{PASSWORD}'"),
        (f"[flags]\nsource = 'http'\nurl = 'https://u:{PASSWORD}@h:0/'\n", ""),
        (f"[flags]\nsource = 'http'\nurl = 'https://u:{PASSWORD}@h/'\nalpha = nan\n", ""),
        (f"[metrics.webhook_401]\nmax_ratio = nan\nx = 'http://u:{PASSWORD}@h/'\n", ""),
        ("", f"service_url = 'http://u:{PASSWORD}@h/\nbroken"),
        ("", f"app_host = 'ssh://u:{PASSWORD}@h:70000'"),
    ],
)
def test_secrets_never_reach_the_message(tmp_path: Path, extra: str, target_extra: str) -> None:
    path = write_config(tmp_path, database="ledger", extra=extra, target_extra=target_extra)
    error = _refused(path)
    assert PASSWORD not in str(error) and PASSWORD not in repr(error)
    assert "Sup3r" not in str(error)


def test_loaded_config_does_not_show_a_url_password(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        database="ledger",
        target_extra=f"service_url = 'http://svc:{PASSWORD}@127.0.0.1:8000/'\n"
        f"prometheus_url = 'http://p:{PASSWORD}@127.0.0.1:9090/'",
    )
    config = load_config(path)
    target = config.targets["staging"]
    assert target.service_url == f"http://svc:{PASSWORD}@127.0.0.1:8000/"  # callers get it
    assert PASSWORD not in repr(config)


@pytest.mark.parametrize("key", ["database_url_env", "webhook_secret_env"])
def test_a_url_pasted_for_a_variable_name_is_refused_unechoed(tmp_path: Path, key: str) -> None:
    """Messages name the variable ("reads its database URL from $NAME"): a URL written where
    its variable's name belongs would put the password in every one of them."""
    path = write_config(
        tmp_path,
        database="ledger",
        extra=f"[targets.prod]\nkind = 'production'\n{key} = 'postgresql://app:{PASSWORD}@db/l'\n"
        "expect = { host = 'db', database = 'l' }\n",
    )
    error = _refused(path)
    assert error.key == f"targets.prod.{key}"
    assert "must name an environment variable" in str(error) and PASSWORD not in str(error)


def test_a_url_in_a_number_key_is_not_echoed(tmp_path: Path) -> None:
    extra = f"[session]\nstatement_timeout_ms = 'postgresql://app:{PASSWORD}@db/l'\n"
    error = _refused(write_config(tmp_path, database="ledger", extra=extra))
    assert error.key == "session.statement_timeout_ms" and "1..2147483647" in str(error)
    assert PASSWORD not in str(error)
