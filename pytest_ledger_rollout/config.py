"""The rollout config (``rollout.toml``): one typed model, validated at start-up.

Every problem is a ``ConfigError`` naming the file and the key, so the run stops as a usage
error before anything connects.

Why hand-written and not pydantic (issue 13, evaluated 2026-12): a pydantic v2 version (models
per table, ``extra="forbid"``, ``allow_inf_nan=False``, ``SecretStr`` URLs) passed the same tests
and was 17 lines (2%) shorter: 860 against 877, measured before the dataclasses moved to their
layers. It kept no fewer moving parts: every key is named twice (a model of the file's shape,
then these dataclasses, whose names and units differ: ``*_s`` seconds, ``id_column``, the flag
table's ``*_column``), integer ranges still need our own check (pydantic reports one bound of
two), and saying "dotted.key: problem (allowed: ...)" takes a translation layer over pydantic's
error locations (discriminator tags, list indexes, a field named ``schema_``). It also made
pydantic a core dependency of a plugin loaded by every pytest run, and importing this module
0.1 s slower. ``_Table`` names the key where each check is made instead.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pytest_ledger_rollout.checks.flags import (
    FILE,
    FLAG_SOURCES,
    HTTP,
    SQL,
    FlagSourceConfig,
    FlagTable,
)
from pytest_ledger_rollout.checks.forensics.preflight import ForensicsConfig
from pytest_ledger_rollout.checks.ledger import LedgerTables
from pytest_ledger_rollout.checks.metrics.decision import DEFAULT_POLICY, DecisionPolicy, Verdict
from pytest_ledger_rollout.checks.metrics.webhook_watch import (
    DEFAULT_THRESHOLDS,
    MAX_WINDOW_S,
    WebhookWatchThresholds,
)
from pytest_ledger_rollout.checks.migrations import MigrationsConfig, script_location_problem
from pytest_ledger_rollout.checks.pilot.candidates import RiskCriteria
from pytest_ledger_rollout.checks.schema import UniqueSpec
from pytest_ledger_rollout.checks.smoke import SmokeSettings
from pytest_ledger_rollout.checks.tenants import TenantTables
from pytest_ledger_rollout.targets.connection import SessionLimits
from pytest_ledger_rollout.targets.declared import Expectation, TargetConfig, url_port_problem
from pytest_ledger_rollout.targets.kinds import EPHEMERAL, TARGET_KINDS
from pytest_ledger_rollout.targets.postgres import EphemeralSettings

EPHEMERAL_PROVIDERS = ("auto", "testcontainers", "local")
ROLLOUT_FLAGS = (
    "ledger_shadow_write",
    "ledger_balance_mismatch_log",
    "webhook_signature_enforced",
    "ledger_enforce_balance",
)
DEFAULT_FLAG_SOURCE = FlagSourceConfig(SQL)
# [flags] keys naming the sql source's table and columns -> FlagTable fields
FLAG_TABLE_KEYS = {
    "table": "table",
    "key_column": "key",
    "tenant_column": "tenant",
    "enabled_column": "enabled",
    "changed_at_column": "changed_at",
}
BIGINT_MAX = 2**63 - 1  # what a Postgres bigint parameter holds
INT_MAX = 2**31 - 1  # Postgres' limit for statement_timeout and lock_timeout (ms)
MAX_DAYS = 36_500  # a century of history; an interval of more overflows sooner or later
# Amounts reach numeric parameters and the service: 1e18 and 18 decimals hold any ledger's money,
# while Postgres numeric refuses '1e999999' mid-check.
MAX_AMOUNT, AMOUNT_DECIMALS = Decimal(10) ** 18, 18


class ConfigError(ValueError):
    def __init__(self, path: Path, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class FlagsConfig:
    source: FlagSourceConfig = DEFAULT_FLAG_SOURCE
    order: tuple[str, ...] = ROLLOUT_FLAGS  # the runbook's flip order
    steps: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "2.1": ROLLOUT_FLAGS[:2],
            "2.3": ROLLOUT_FLAGS[2:3],
            "2.4": ROLLOUT_FLAGS[3:],
        }
    )
    signature_flag: str = ROLLOUT_FLAGS[2]  # its flip time splits the 401 watch's windows
    enforce_flag: str = ROLLOUT_FLAGS[3]


@dataclass(frozen=True)
class BackfillConfig:
    # Run on the app host in app_dir; its output must match nothing_to_change.
    dry_run_command: str = (
        "python -m backend.scripts.backfill_wallet_balances --dry-run --batch-size 1000"
    )
    nothing_to_change: str = r"(?m)^total: .*\b0 entries\b"


@dataclass(frozen=True)
class MetricsConfig:
    webhook_401: WebhookWatchThresholds = DEFAULT_THRESHOLDS
    decision: DecisionPolicy = DEFAULT_POLICY


@dataclass(frozen=True)
class PilotConfig:
    tenants: tuple[str, ...] = ()  # 3.1: the 1 to 3 pilot tenants
    control_tenants: tuple[str, ...] = ()  # 3.3: compared with the pilots in the same window
    risk: RiskCriteria = field(default_factory=RiskCriteria)
    dry_run: bool = False  # 3.3 evaluates and reports what it would decide, without failing


@dataclass(frozen=True)
class GaConfig:
    waves: tuple[tuple[str, ...], ...] = ()  # the rollout waves declared so far
    rollback_flags: tuple[str, ...] = ()  # OPS-02: what a tenant's rollback turns off
    min_share: float = 1.0  # the share of tenants enforce must reach ("general use")


@dataclass(frozen=True)
class SignoffConfig:
    signing_key: Path | None = None  # SSH private key: each sign-off JSON gets a .sig
    allowed_signers: Path | None = None  # ssh-keygen allowed-signers: predecessors must verify


@dataclass(frozen=True)
class RolloutConfig:
    path: Path
    sha256: str
    migrations: MigrationsConfig
    unique: tuple[UniqueSpec, ...]
    targets: dict[str, TargetConfig]
    session: SessionLimits = field(default_factory=SessionLimits)
    ledger: LedgerTables = field(default_factory=LedgerTables)
    flags: FlagsConfig = field(default_factory=lambda: FlagsConfig())
    tenants: TenantTables = field(default_factory=TenantTables)
    backfill: BackfillConfig = field(default_factory=lambda: BackfillConfig())
    metrics: MetricsConfig = field(default_factory=lambda: MetricsConfig())
    smoke: SmokeSettings = field(default_factory=SmokeSettings)
    pilot: PilotConfig = field(default_factory=lambda: PilotConfig())
    ga: GaConfig = field(default_factory=lambda: GaConfig())
    forensics: ForensicsConfig = field(default_factory=ForensicsConfig)
    signoff: SignoffConfig = field(default_factory=SignoffConfig)

    def walk_settings(self) -> EphemeralSettings:
        """The throwaway server for a walk of the history: the ephemeral target's settings,
        else defaults."""
        local = self.targets.get(self.default_target() or "")
        return (local.ephemeral if local else None) or EphemeralSettings()

    def default_target(self) -> str | None:
        return next((t.name for t in self.targets.values() if t.kind == EPHEMERAL), None)


# Comments, string literals (standard, E'' escape, dollar-quoted) and quoted identifiers: their
# content is no SQL, so they are blanked before statements and keywords are looked for.
_SQL_INERT = re.compile(
    r"--[^\n]*|/\*.*?\*/|[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\""
    r"|(\$[A-Za-z_]*\$).*?\1",
    re.DOTALL,
)
_SESSION_CONTROL = frozenset(
    [
        "ABORT",
        "BEGIN",
        "CHECKPOINT",
        "COMMIT",
        "DISCARD",
        "DO",
        "END",
        "LISTEN",
        "LOCK",
        "PREPARE",
        "RELEASE",
        "RESET",
        "ROLLBACK",
        "SAVEPOINT",
        "SET",
        "START",
    ]
)


def session_control_problem(sql: str) -> str | None:
    """Why ``sql`` may not run in a read-only production session, or None."""
    statements = [s.strip() for s in _SQL_INERT.sub(" ", sql).split(";")]
    statements = [s for s in statements if s]
    if len(statements) != 1:
        return f"{len(statements)} statements where one is allowed"
    first = statements[0].split(None, 1)[0].upper()
    if first in _SESSION_CONTROL:
        return f"{first} is transaction or session control"
    if re.search(r"\bset_config\s*\(", statements[0], re.IGNORECASE):
        return "set_config() changes the session's settings"
    return None


class _Table:
    """A TOML table that remembers its dotted key, so errors name the exact key."""

    def __init__(self, path: Path, key: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, key or "<root>", "must be a table")
        self.path, self.key, self.data = path, key, data

    def _name(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self._name(name), problem)

    def only(self, *allowed: str) -> None:
        for name in self.data:
            if name not in allowed:
                raise self.error(name, f"unknown key (known: {', '.join(allowed)})")

    def table(self, name: str, required: bool = True) -> _Table | None:
        if name not in self.data:
            if required:
                raise self.error(name, "missing table")
            return None
        return _Table(self.path, self._name(name), self.data[name])

    def text(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.data.get(name, default)
        if value is None:
            if required:
                raise self.error(name, "required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, "must be a non-empty string")
        return value

    def sql(self, name: str, default: str | None = None) -> str | None:
        """SQL the plugin runs on the target: one statement that cannot end, open or reconfigure
        a transaction, so it cannot lift a production session's read-only mode."""
        value = self.text(name, default)
        if value is not None and (problem := session_control_problem(value)):
            raise self.error(
                name, f"{problem}: write one query (SELECT ...) with no transaction control or SET"
            )
        return value

    def texts(
        self, name: str, required: bool = False, default: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        """A list of strings; with a default, an empty list is refused (it would silently mean
        the default, or nothing at all)."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(name, "required")
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(name, "must be a list of non-empty strings")
        if default and not value:
            shown = ", ".join(repr(item) for item in default)
            raise self.error(name, f"must name at least one (leave the key out for [{shown}])")
        return tuple(value)

    def positive_int(self, name: str, default: int, maximum: int = BIGINT_MAX) -> int:
        return self._int(name, default, 1, maximum)

    def count(self, name: str, default: int, maximum: int = BIGINT_MAX) -> int:
        return self._int(name, default, 0, maximum)

    def _int(self, name: str, default: int, minimum: int, maximum: int) -> int:
        # Bounded above too: the values reach Postgres parameters and datetime arithmetic.
        value = self.data.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            shown = f", not {value!r}" if isinstance(value, int | float) else ""  # a URL? never
            raise self.error(name, f"must be a whole number in {minimum}..{maximum}{shown}")
        return value

    def number(self, name: str) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, "must be a number")
        try:
            value = float(value)  # TOML integers are unbounded; a float stops at 1.8e308
        except OverflowError:
            raise self.error(
                name, "must be a finite number, not an integer beyond 1.8e308"
            ) from None
        if not math.isfinite(value):  # TOML spells nan and inf; neither is a threshold
            raise self.error(name, f"must be a finite number, not {value}")
        return value

    def url(self, name: str, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is not None and (problem := url_port_problem(value)):
            raise self.error(name, problem)
        return value

    def env_name(self, name: str, default: str) -> str:
        """The name of an environment variable. Never echoed: a URL or secret pasted in its
        place would otherwise reach every message that names the variable."""
        value = str(self.text(name, default))
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise self.error(
                name, f"must name an environment variable (e.g. {default}), not hold its value"
            )
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value


def load_config(path: Path) -> RolloutConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "<file>", f"cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "<file>", f"not valid TOML ({exc})") from None
    root = _Table(path, "", data)
    root.only(
        "migrations",
        "schema",
        "targets",
        "session",
        "ledger",
        "flags",
        "tenants",
        "backfill",
        "metrics",
        "smoke",
        "forensics",
        "pilot",
        "ga",
        "signoff",
    )
    base = path.parent
    targets_table = root.table("targets")
    assert targets_table is not None
    targets = {name: _target(targets_table, name, base) for name in targets_table.data}
    if not targets:
        raise root.error("targets", "declare at least one target")
    return RolloutConfig(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        migrations=_migrations(root, base),
        unique=_unique(root),
        targets=targets,
        session=_session(root),
        ledger=_ledger(root),
        flags=_flags(root, base),
        tenants=_tenants(root),
        backfill=_backfill(root),
        metrics=_metrics(root),
        smoke=_smoke(root),
        pilot=_pilot(root),
        ga=_ga(root),
        forensics=_forensics(root, base),
        signoff=_signoff(root, base),
    )


def _migrations(root: _Table, base: Path) -> MigrationsConfig:
    table = root.table("migrations")
    assert table is not None
    table.only("alembic_ini", "expected_chain", "baseline", "base_schema")
    alembic_ini = base / str(table.text("alembic_ini", required=True))
    if not alembic_ini.is_file():
        raise table.error("alembic_ini", f"no such file: {alembic_ini}")
    problem = script_location_problem(alembic_ini.resolve())
    if problem:
        raise table.error("alembic_ini", problem)
    chain = table.texts("expected_chain", required=True)
    if not chain:
        raise table.error("expected_chain", "must name at least the head revision")
    if len(set(chain)) != len(chain):
        raise table.error("expected_chain", "names a revision twice")
    baseline = table.text("baseline", default=chain[0])
    assert baseline is not None
    if baseline not in chain:
        raise table.error("baseline", f"{baseline!r} is not in expected_chain")
    return MigrationsConfig(
        alembic_ini.resolve(), chain, baseline, _base_schema(table, table.text("base_schema"), base)
    )


def _base_schema(table: _Table, value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    where, colon, function = value.rpartition(":")
    path = value if not colon else where
    if path.endswith((".sql", ".py")):
        if not (base / path).is_file():
            raise table.error("base_schema", f"no such file: {base / path}")
        path = str((base / path).resolve())
    elif not colon or not function.isidentifier():
        raise table.error(
            "base_schema",
            f"{value!r}: expected 'package.module:function', 'file.py:function' or 'file.sql'",
        )
    return f"{path}:{function}" if colon else path


def _unique(root: _Table) -> tuple[UniqueSpec, ...]:
    schema = root.table("schema", required=False)
    entries = [] if schema is None else schema.data.get("unique", [])
    if schema is None or not entries:
        raise ConfigError(
            root.path,
            "schema.unique",
            "declare at least one [[schema.unique]] (table, columns): step 1.3 checks it and "
            "the duplicates pre-flight runs against it",
        )
    schema.only("unique")
    if not isinstance(entries, list):
        raise schema.error("unique", "must be an array of tables ([[schema.unique]])")
    specs = []
    for index, entry in enumerate(entries):
        table = _Table(schema.path, f"schema.unique[{index}]", entry)
        table.only("table", "columns", "name")
        columns = table.texts("columns", required=True)
        if not columns:
            raise table.error("columns", "must name at least one column")
        specs.append(
            UniqueSpec(
                table=str(table.text("table", required=True)),
                columns=columns,
                name=table.text("name"),
            )
        )
    return tuple(specs)


def _signoff(root: _Table, base: Path) -> SignoffConfig:
    table = root.table("signoff", required=False)
    if table is None:
        return SignoffConfig()
    table.only("signing_key", "allowed_signers")
    files = {}
    for name in ("signing_key", "allowed_signers"):
        value = table.text(name)
        if value is not None:
            files[name] = (base / value).resolve()
            if not files[name].is_file():
                raise table.error(name, f"no such file: {files[name]}")
    return SignoffConfig(**files)


def _forensics(root: _Table, base: Path) -> ForensicsConfig:
    table = root.table("forensics", required=False)
    if table is None:
        return ForensicsConfig()
    table.only(
        "ignore_tables",
        "snapshot",
        "large_table_rows",
        "large_table_bytes",
        "duplicate_groups_shown",
    )
    defaults = ForensicsConfig()
    snapshot = table.text("snapshot")
    return ForensicsConfig(
        ignore_tables=table.texts("ignore_tables"),
        snapshot=(base / snapshot).resolve() if snapshot else None,
        large_table_rows=table.positive_int("large_table_rows", defaults.large_table_rows),
        large_table_bytes=table.positive_int("large_table_bytes", defaults.large_table_bytes),
        duplicate_groups_shown=table.positive_int(
            "duplicate_groups_shown", defaults.duplicate_groups_shown
        ),
    )


def _session(root: _Table) -> SessionLimits:
    table = root.table("session", required=False)
    if table is None:
        return SessionLimits()
    names = ("statement_timeout_ms", "lock_timeout_ms", "phase_lock_wait_ms")
    if "migration_lock_wait_ms" in table.data:
        raise table.error(
            "migration_lock_wait_ms",
            "renamed: write phase_lock_wait_ms (the lock covers a whole phase run)",
        )
    table.only(*names)
    defaults = SessionLimits()
    return SessionLimits(
        **{name: table.positive_int(name, getattr(defaults, name), INT_MAX) for name in names}
    )


def _target(targets: _Table, name: str, base: Path) -> TargetConfig:
    table = targets.table(name)
    assert table is not None
    kind = table.text("kind", required=True)
    if kind not in TARGET_KINDS:
        raise table.error("kind", f"must be one of {', '.join(TARGET_KINDS)}, not {kind!r}")
    common = ("kind", "database_url_env", "app_host", "app_dir")
    services = ("service_url", "prometheus_url", "webhook_secret_env")
    ephemeral_keys = ("provider", "image", "bindir", "run_as", "database")
    if kind == EPHEMERAL:
        table.only(*common, *ephemeral_keys)
    else:
        table.only(*common, *services, "expect", "require_read_only_role")
    app_host = table.url("app_host")
    if app_host is not None and "://" not in app_host:
        raise table.error("app_host", "write the testinfra scheme, e.g. local:// or ssh://host")
    app_dir = table.text("app_dir")
    if app_dir is not None and app_host in (None, "local://"):
        app_dir = str((base / app_dir).resolve())
    return TargetConfig(
        name=name,
        kind=kind,
        database_url_env=table.env_name("database_url_env", "DATABASE_URL"),
        expect=_expectation(table) if kind != EPHEMERAL else Expectation(),
        app_host=app_host,
        app_dir=app_dir,
        service_url=table.url("service_url"),
        prometheus_url=table.url("prometheus_url"),
        webhook_secret_env=table.env_name("webhook_secret_env", "LEDGER_WEBHOOK_SECRET"),
        ephemeral=_ephemeral(table) if kind == EPHEMERAL else None,
        require_read_only_role=table.boolean("require_read_only_role", False),
    )


def _expectation(target: _Table) -> Expectation:
    table = target.table("expect")
    assert table is not None
    table.only("host", "database", "server_addr", "system_identifier")
    identifier = table.text("system_identifier")
    if identifier is not None and not identifier.isdigit():
        raise table.error(
            "system_identifier",
            f"{identifier!r} must be the decimal number "
            "`SELECT system_identifier FROM pg_control_system()` shows",
        )
    return Expectation(
        host=table.text("host", required=True),
        database=table.text("database", required=True),
        server_addr=table.texts("server_addr"),
        system_identifier=identifier,
    )


def _ephemeral(table: _Table) -> EphemeralSettings:
    defaults = EphemeralSettings()
    provider = table.text("provider", default=defaults.provider)
    if provider not in EPHEMERAL_PROVIDERS:
        raise table.error("provider", f"must be one of {', '.join(EPHEMERAL_PROVIDERS)}")
    return EphemeralSettings(
        provider=str(provider),
        image=str(table.text("image", default=defaults.image)),
        bindir=table.text("bindir"),
        run_as=table.text("run_as"),
        database=str(table.text("database", default=defaults.database)),
    )


def _ledger(root: _Table) -> LedgerTables:
    table = root.table("ledger", required=False)
    defaults = LedgerTables()
    if table is None:
        return defaults
    special = ("backfill_entry_types", "worst_offenders")
    names = [name for name in vars(defaults) if name not in special]
    table.only(*names, *special)
    return replace(
        defaults,
        **{name: str(table.text(name, default=getattr(defaults, name))) for name in names},
        backfill_entry_types=table.texts(
            "backfill_entry_types", default=defaults.backfill_entry_types
        ),
        worst_offenders=table.positive_int("worst_offenders", defaults.worst_offenders),
    )


def _flags(root: _Table, base: Path) -> FlagsConfig:
    table = root.table("flags", required=False)
    defaults = FlagsConfig()
    if table is None:
        return defaults
    table.only(
        "source",
        *FLAG_TABLE_KEYS,
        "query",
        "url",
        "path",
        "order",
        "signature_flag",
        "enforce_flag",
        "steps",
    )
    kind = table.text("source", default=defaults.source.kind)
    if kind not in FLAG_SOURCES:
        raise table.error("source", f"must be one of {', '.join(FLAG_SOURCES)}")
    named = [name for name in (*FLAG_TABLE_KEYS, "query") if name in table.data]
    if kind != SQL and named:
        raise table.error(named[0], "applies to source = 'sql' only")
    if "query" in named and len(named) > 1:
        # One definition of the rows: the table (which rehearsals can also write) or a query.
        raise table.error(named[0], "give either query or the table keys, not both")
    for name, owner in (("url", HTTP), ("path", FILE)):
        if name in table.data and kind != owner:
            raise table.error(name, f"applies to source = '{owner}' only")
    path = table.text("path")
    flag_table = FlagTable()
    source = FlagSourceConfig(
        kind=str(kind),
        table=replace(
            flag_table,
            **{
                field_name: str(table.text(name, default=getattr(flag_table, field_name)))
                for name, field_name in FLAG_TABLE_KEYS.items()
            },
        ),
        query=_embeddable(table.sql("query")),
        url=table.url("url", required=kind == HTTP),
        path=(base / path).resolve() if path else None,
    )
    if kind == FILE and source.path is None:
        raise table.error("path", "required for source = 'file'")
    steps_table = table.table("steps", required=False)
    steps = defaults.steps
    if steps_table is not None:
        # A step left out keeps its default: the suites and the rehearsal look every step up.
        steps_table.only(*defaults.steps)
        steps = {**steps, **{step: steps_table.texts(step) for step in steps_table.data}}
    return FlagsConfig(
        source=source,
        order=table.texts("order", default=defaults.order),
        steps=steps,
        signature_flag=str(table.text("signature_flag", default=defaults.signature_flag)),
        enforce_flag=str(table.text("enforce_flag", default=defaults.enforce_flag)),
    )


def _embeddable(query: str | None) -> str | None:
    """The query without its terminator: PRD checks embed it in their own statement."""
    return query.rstrip().rstrip(";") if query is not None else None


def _tenants(root: _Table) -> TenantTables:
    """[tenants]: the table every per-tenant check reads its tenant list from."""
    table = root.table("tenants", required=False)
    defaults = TenantTables()
    if table is None:
        return defaults
    table.only("table", "id_column")
    return replace(
        defaults,
        tenants=str(table.text("table", default=defaults.tenants)),
        tenant_id=str(table.text("id_column", default=defaults.tenant_id)),
    )


def _backfill(root: _Table) -> BackfillConfig:
    table = root.table("backfill", required=False)
    defaults = BackfillConfig()
    if table is None:
        return defaults
    table.only("dry_run_command", "nothing_to_change")
    pattern = str(table.text("nothing_to_change", default=defaults.nothing_to_change))
    try:
        re.compile(pattern)
    except re.error as exc:
        raise table.error("nothing_to_change", f"not a regular expression ({exc})") from None
    return BackfillConfig(
        dry_run_command=str(table.text("dry_run_command", default=defaults.dry_run_command)),
        nothing_to_change=pattern,
    )


_WATCH_NUMBERS = {"min_requests": int, "max_ratio": float, "alpha": float, "max_after_share": float}
_WATCH_WINDOWS = {"before_window_s": "before_window", "after_window_s": "after_window"}
_WATCH_QUERIES = ("unauthorized_query", "requests_query")


def _numbers(table: _Table, kinds: dict[str, type]) -> dict[str, Any]:
    """The numbers among ``kinds`` the table sets, converted to their kind."""
    numbers: dict[str, Any] = {}
    for name, kind in kinds.items():
        if kind is int and name in table.data:
            numbers[name] = table.positive_int(name, 1)
        elif (value := table.number(name)) is not None:
            numbers[name] = kind(value)
    return numbers


def _metrics(root: _Table) -> MetricsConfig:
    table = root.table("metrics", required=False)
    if table is None:
        return MetricsConfig()
    table.only("webhook_401", "decision")
    decision = _decision(table.table("decision", required=False))
    watch = table.table("webhook_401", required=False)
    if watch is None:
        return MetricsConfig(decision=decision)
    watch.only(*_WATCH_NUMBERS, *_WATCH_WINDOWS, *_WATCH_QUERIES, "unauthorized_empty_means_zero")
    changes: dict[str, Any] = _numbers(watch, _WATCH_NUMBERS)
    for name, attribute in _WATCH_WINDOWS.items():
        if name in watch.data:
            changes[attribute] = timedelta(seconds=watch.positive_int(name, 1, MAX_WINDOW_S))
    for name in _WATCH_QUERIES:
        if name in watch.data:
            changes[name] = watch.text(name)
    changes["unauthorized_empty_means_zero"] = watch.boolean(
        "unauthorized_empty_means_zero", DEFAULT_THRESHOLDS.unauthorized_empty_means_zero
    )
    try:
        return MetricsConfig(webhook_401=replace(DEFAULT_THRESHOLDS, **changes), decision=decision)
    except ValueError as exc:
        raise watch.error(str(exc).split(" ", 1)[0], str(exc)) from None


def _smoke(root: _Table) -> SmokeSettings:
    table = root.table("smoke", required=False)
    defaults = SmokeSettings()
    if table is None:
        return defaults
    texts = ("tenant", "owner_ref", "provider", "external_command", "external_dir")
    amounts = ("deposit", "withdrawal")
    table.only(*texts, *amounts)
    changes: dict[str, Any] = {name: table.text(name) for name in texts if name in table.data}
    for name in amounts:
        if name in table.data:
            changes[name] = _amount(table, name)
    return replace(defaults, **changes)


def _pilot(root: _Table) -> PilotConfig:
    table = root.table("pilot", required=False)
    if table is None:
        return PilotConfig()
    table.only("tenants", "control_tenants", "risk", "dry_run")
    risk = table.table("risk", required=False)
    criteria = RiskCriteria()
    if risk is not None:
        limits = {"min_wallets": BIGINT_MAX, "max_wallets": BIGINT_MAX, "volume_days": MAX_DAYS}
        risk.only(*limits, "max_open_findings", "max_withdrawal_volume", "volume_statuses")
        changes: dict[str, Any] = {
            name: risk.positive_int(name, getattr(criteria, name), limit)
            for name, limit in limits.items()
        }
        changes["max_open_findings"] = risk.count("max_open_findings", criteria.max_open_findings)
        if "max_withdrawal_volume" in risk.data:
            changes["max_withdrawal_volume"] = _amount(risk, "max_withdrawal_volume")
        changes["volume_statuses"] = risk.texts("volume_statuses", default=criteria.volume_statuses)
        if changes["min_wallets"] > changes["max_wallets"]:
            raise risk.error(
                "min_wallets",
                f"{changes['min_wallets']} is above max_wallets ({changes['max_wallets']}): "
                "no tenant could be a pilot",
            )
        criteria = replace(criteria, **changes)
    return PilotConfig(
        tenants=table.texts("tenants"),
        control_tenants=table.texts("control_tenants"),
        risk=criteria,
        dry_run=table.boolean("dry_run", False),
    )


def _ga(root: _Table) -> GaConfig:
    table = root.table("ga", required=False)
    if table is None:
        return GaConfig()
    table.only("waves", "rollback_flags", "min_share")
    waves = table.data.get("waves", [])
    if not isinstance(waves, list) or not all(
        isinstance(wave, list) and wave and all(isinstance(t, str) and t for t in wave)
        for wave in waves
    ):
        raise table.error("waves", 'must be a list of tenant lists, e.g. [["t-001"], ["t-002"]]')
    share = table.number("min_share")
    share = GaConfig.min_share if share is None else share
    if not 0 < share <= 1:
        raise table.error("min_share", "must be a number in (0, 1]")
    return GaConfig(
        waves=tuple(tuple(wave) for wave in waves),
        rollback_flags=table.texts("rollback_flags"),
        min_share=float(share),
    )


def _amount(table: _Table, name: str) -> Decimal:
    try:
        amount = Decimal(str(table.data[name]))
    except ArithmeticError:
        raise table.error(name, 'must be an amount like "25.00"') from None
    if not amount.is_finite() or amount <= 0:
        raise table.error(name, "must be a positive amount")
    if amount >= MAX_AMOUNT or -int(amount.as_tuple().exponent) > AMOUNT_DECIMALS:
        raise table.error(
            name, f"must be a positive amount below 1e18 with at most {AMOUNT_DECIMALS} decimals"
        )
    return amount


_SIGNALS = ("insufficient_funds", "webhook_401")


def _decision(table: _Table | None) -> DecisionPolicy:
    """[metrics.decision]: windows, and for both rate signals the same test settings."""
    if table is None:
        return DEFAULT_POLICY
    actions = tuple(f"{signal}_action" for signal in _SIGNALS)
    table.only("window_s", "baseline_window_s", *_WATCH_NUMBERS, *actions, "mismatch_max_count")
    if "max_after_share" in table.data:
        raise table.error("max_after_share", "applies to [metrics.webhook_401] only")
    tests = _numbers(table, _WATCH_NUMBERS)
    signals: dict[str, Any] = {}
    for signal, action in zip(_SIGNALS, actions, strict=True):
        verdict = table.text(action)
        if verdict is not None and verdict not in (Verdict.HOLD, Verdict.ROLLBACK):
            raise table.error(action, "must be HOLD or ROLLBACK")
        changes = {**tests, **({"action": Verdict(verdict)} if verdict else {})}
        try:
            signals[signal] = replace(getattr(DEFAULT_POLICY, signal), **changes)
        except ValueError as exc:  # "insufficient_funds.max_ratio must be ...": the key is ours
            key = str(exc).split(" ", 1)[0].removeprefix(f"{signal}.")
            raise table.error(key, str(exc).split(" ", 1)[1]) from None
    windows: dict[str, Any] = {
        attribute: timedelta(seconds=table.positive_int(name, 1, MAX_WINDOW_S))
        for name, attribute in (("window_s", "window"), ("baseline_window_s", "baseline_window"))
        if name in table.data
    }
    mismatch = DEFAULT_POLICY.balance_mismatch
    mismatch = replace(mismatch, max_count=table.count("mismatch_max_count", mismatch.max_count))
    try:
        return replace(DEFAULT_POLICY, **signals, **windows, balance_mismatch=mismatch)
    except ValueError as exc:
        raise table.error(str(exc).split(" ", 1)[0], str(exc)) from None
