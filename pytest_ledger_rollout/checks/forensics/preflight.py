"""Pre-flight for the pending migrations of a target behind head: will the upgrade fail, lock a
busy table, or leave step 1.4 without a rollback? Read-only on the target: catalog queries and
one set-based statement per configured UNIQUE; the migrations are rendered offline."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.fingerprint import VERSION_TABLE
from pytest_ledger_rollout.checks.forensics.history import DowngradeProof, History
from pytest_ledger_rollout.checks.migrations import AlembicProject
from pytest_ledger_rollout.checks.schema import UniqueSpec, table_columns, unique_objects
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed

ALEMBIC_DEFAULT_WIDTH = 32  # Alembic creates version_num as VARCHAR(32)
_RUNNING = re.compile(r"^-- Running upgrade (\S*) -> (\S+)\s*$", re.MULTILINE)
_WIDEN = re.compile(
    rf"ALTER TABLE {VERSION_TABLE} ALTER COLUMN version_num TYPE VARCHAR\((\d+)\)", re.IGNORECASE
)
# The statement's table: ALTER TABLE t …, CREATE [UNIQUE] INDEX i ON t …
_TABLE = re.compile(
    r"^\s*(?:ALTER\s+TABLE\s+(?:ONLY\s+)?(?:IF\s+EXISTS\s+)?|CREATE\s+(?:UNIQUE\s+)?INDEX\s+"
    r"(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+ON\s+(?:ONLY\s+)?|DROP\s+INDEX\s+)"
    r"(\"[^\"]+\"|[\w.]+)",
    re.IGNORECASE,
)
_CREATE_TABLE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\"[^\"]+\"|[\w.]+)", re.I)
# squawk rules that mean a long ACCESS EXCLUSIVE / SHARE lock or a rewrite of the table; the
# others (robustness, timeouts, naming) are not about this gate.
LOCK_RULES = frozenset(
    {
        "require-concurrent-index-creation",
        "require-concurrent-index-deletion",
        "constraint-missing-not-valid",
        "disallowed-unique-constraint",
        "changing-column-type",
        "adding-not-nullable-field",
        "adding-required-field",
        "adding-field-with-default",
        "adding-foreign-key-constraint",
        "adding-serial-primary-key-field",
    }
)
_OFFLINE_URL = "postgresql+psycopg://offline.invalid/render"  # offline mode never connects


def pending_revisions(project: AlembicProject, current: Sequence[str]) -> tuple[str, ...]:
    """Revisions ``alembic upgrade heads`` would apply, oldest first."""
    revisions = project.revisions()
    parents = {r.id: r.down for r in revisions}
    applied: set[str] = set()
    stack = list(current)
    while stack:
        rev = stack.pop()
        if rev not in applied:
            applied.add(rev)
            stack.extend(parents.get(rev, ()))
    return tuple(r.id for r in reversed(revisions) if r.id not in applied)


@contextmanager
def _offline_url() -> Iterator[None]:
    # env.py files read the URL from the ini or from DATABASE_URL; offline mode only needs the
    # dialect, so neither may carry the real (secret) URL into the rendering.
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = _OFFLINE_URL
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous


def _render(project: AlembicProject, span: str) -> tuple[str, Exception | None]:
    """`alembic upgrade SPAN --sql` (offline: env.py never connects): the SQL rendered until
    it stopped, and why it stopped early (None when it rendered the whole span)."""
    buffer = io.StringIO()
    config = project.offline_config(_OFFLINE_URL, buffer)
    script = project.script  # loaded once: `command.upgrade` would load every revision again
    starting, _, destination = span.rpartition(":")

    def steps(revision: Any, context: MigrationContext) -> Any:
        return script._upgrade_revs(destination, revision)

    try:
        with (
            _offline_url(),
            EnvironmentContext(
                config, script, fn=steps, as_sql=True, starting_rev=starting or None,
                destination_rev=destination,
            ),
        ):  # fmt: skip
            script.run_env()  # what `alembic upgrade SPAN --sql` runs
    except Exception as exc:  # whatever a migration that reads data raises offline
        return buffer.getvalue(), exc
    return buffer.getvalue(), None


def _split(rendered: str) -> dict[str, str]:
    marks = list(_RUNNING.finditer(rendered))
    return {
        mark.group(2): rendered[mark.end() : marks[i + 1].start() if i + 1 < len(marks) else None]
        for i, mark in enumerate(marks)
    }


def render_pending_sql(
    project: AlembicProject, current: Sequence[str], revisions: Sequence[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """`alembic upgrade FROM:heads --sql`, split per revision (keyed by the revision id), and
    the revisions that cannot be rendered offline with why (they read data: op.get_bind(),
    sa.inspect(bind), a rowcount). A revision that fails is the last one the output had
    started (Alembic writes its "-- Running upgrade" mark before running it): rendering goes
    on from the revision after it, so each such revision costs one more env.py run."""
    if len(current) > 1:
        raise ValueError("offline rendering starts from one revision; the target has several")
    rendered: dict[str, str] = {}
    unrendered: dict[str, str] = {}
    start = current[0] if current else None
    while True:
        sql, error = _render(project, f"{start}:heads" if start else "heads")
        steps = _split(sql)
        if error is None:
            rendered.update(steps)
            return rendered, unrendered
        failing = list(steps)[-1] if steps else None
        if failing is None or failing in unrendered:
            # Failed before any revision ran (env.py itself): nothing more can be rendered.
            reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            unrendered.update({rev: reason for rev in revisions if rev not in rendered})
            return rendered, unrendered
        rendered.update({rev: body for rev, body in steps.items() if rev != failing})
        unrendered[failing] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        start = failing


@dataclass(frozen=True)
class PendingUpgrade:
    """What ``alembic upgrade heads`` would do to the target, read before it runs."""

    current: tuple[str, ...]
    revisions: tuple[str, ...]  # oldest first
    sql: dict[str, str]  # rendered offline, per revision
    # Revisions that cannot be rendered offline (they read data), with the error.
    unrendered: dict[str, str] = field(default_factory=dict)

    def not_linted(self) -> list[str]:
        return [f"{rev} reads data; its statements were not linted" for rev in self.unrendered]


def read_pending(project: AlembicProject, connection: Connection) -> PendingUpgrade:
    current = project.current(connection)
    revisions = pending_revisions(project, current)
    sql, unrendered = render_pending_sql(project, current, revisions)
    return PendingUpgrade(current, revisions, sql, unrendered)


# --- version width ------------------------------------------------------------------------

_VERSION_WIDTH = text(
    """
    SELECT CASE WHEN a.atttypmod > 4 THEN a.atttypmod - 4 END AS width,
           format_type(a.atttypid, a.atttypmod) AS type
    FROM pg_attribute a
    WHERE a.attrelid = to_regclass(:table) AND a.attname = 'version_num' AND NOT a.attisdropped
    """
)


def check_version_width(connection: Connection, pending: PendingUpgrade) -> CheckResult:
    """Every pending id must fit version_num when Alembic records it (after its revision ran,
    so a revision may widen the column for itself)."""
    row = connection.execute(_VERSION_WIDTH, {"table": VERSION_TABLE}).first()
    if row is None:
        width: int | None = ALEMBIC_DEFAULT_WIDTH
        seen = f"no {VERSION_TABLE} table yet: Alembic will create version_num VARCHAR(32)"
    else:
        width = row.width
        seen = f"{VERSION_TABLE}.version_num is {row.type} (pg_attribute)"
    evidence = [seen]
    too_long = []
    for rev in pending.revisions:
        widened = _WIDEN.findall(pending.sql.get(rev, ""))
        if widened:
            width = int(widened[-1])
            evidence.append(f"{rev} widens version_num to VARCHAR({width})")
        fits = width is None or len(rev) <= width
        evidence.append(f"{rev}: {len(rev)} characters, {'fits' if fits else 'TOO LONG'}")
        if not fits:
            too_long.append(rev)
    record = Evidence("alembic_version.version_num width", "\n".join(evidence))
    if not too_long:
        return passed(f"{len(pending.revisions)} pending id(s) fit version_num ({seen})", record)
    needed = max(128, *(len(rev) for rev in too_long))
    return failed(
        Failure(
            f"{len(too_long)} pending revision id(s) do not fit {VERSION_TABLE}.version_num",
            expected="every pending revision id fits version_num when Alembic records it",
            seen=seen
            + "\n"
            + "\n".join(f"{rev}: {len(rev)} characters > {width}" for rev in too_long)
            + '\nthe upgrade would die with "value too long for type character varying"',
            remedy=(
                f"Widen the column before the upgrade (staging: run it, then rerun):\n"
                f"    ALTER TABLE {VERSION_TABLE} ALTER COLUMN version_num"
                f" TYPE VARCHAR({needed});\n"
                "and make the migrations do it themselves: in the first revision, before any "
                "long id is recorded,\n"
                f'    op.alter_column("{VERSION_TABLE}", "version_num", '
                f"type_=sa.String({needed}), existing_type=sa.String(32), "
                "existing_nullable=False)"
            ),
        ),
        record,
    )


# --- duplicates against a pending UNIQUE --------------------------------------------------


_ADD_COLUMN = re.compile(
    r"ALTER\s+TABLE\s+(?:ONLY\s+)?(?:IF\s+EXISTS\s+)?(\"[^\"]+\"|[\w.]+)\s+ADD\s+(?:COLUMN\s+)?"
    r"(?:IF\s+NOT\s+EXISTS\s+)?(\"[^\"]+\"|\w+)\s+([^;]*)",
    re.IGNORECASE,
)
_DEFAULT = re.compile(r"\bDEFAULT\s+(.+?)(?:\s+NOT\s+NULL|\s+NULL)?\s*$", re.IGNORECASE)
_CONSTANT = re.compile(r"^(?:'[^']*'(?:::\w+)?|-?\d+(?:\.\d+)?|true|false)$", re.IGNORECASE)


def _added_columns(pending: PendingUpgrade, table: str) -> dict[str, tuple[str, str]]:
    """Columns the rendered pending revisions add to ``table``: name -> (revision, default)."""
    added = {}
    for rev, sql in pending.sql.items():
        for match in _ADD_COLUMN.finditer(sql):
            if match.group(1).strip('"') == table:
                default = _DEFAULT.search(" ".join(match.group(3).split()))
                added[match.group(2).strip('"')] = (rev, default.group(1) if default else "")
    return added


def check_unique_preflight(
    connection: Connection, spec: UniqueSpec, limit: int, pending: PendingUpgrade | None = None
) -> CheckResult:
    """Would UNIQUE(spec.columns) fail on today's rows? One statement: the number of duplicate
    groups and the worst ``limit`` groups (keys and copies only). Columns a pending revision
    adds are checked as far as their definition allows."""
    label = f"UNIQUE ({', '.join(spec.columns)}) on {spec.table}"
    columns = {name for name, _, _ in table_columns(connection, spec.table)}
    if not columns:
        return passed(f"{label}: table does not exist yet, nothing can conflict")
    if any(set(u.columns) == set(spec.columns) for u in unique_objects(connection, spec.table)):
        return passed(f"{label}: already enforced by the database")
    absent = [c for c in spec.columns if c not in columns]
    if not absent:
        return _duplicates(connection, spec, spec.columns, limit, label)
    added = _added_columns(pending, spec.table) if pending else {}
    unexplained = [c for c in absent if c not in added]
    if unexplained and pending is not None and pending.unrendered:
        return passed(
            f"{label}: could not be checked: {', '.join(unexplained)} not in {spec.table} yet, "
            f"and {', '.join(pending.unrendered)} (not rendered offline: "
            f"{'; '.join(pending.not_linted())}) may add it",
        )
    if unexplained:
        return failed(
            Failure(
                f"{spec.table} lacks column(s) {', '.join(unexplained)} of the UNIQUE to be added",
                expected=f"{spec.table} with columns {', '.join(spec.columns)}",
                seen=f"columns: {', '.join(sorted(columns))}; no pending revision adds "
                f"{', '.join(unexplained)}",
                remedy="The table differs from the claimed revision: see the schema state check.",
            )
        )
    new = [
        f"{c} (added by {added[c][0]}" + (f", DEFAULT {added[c][1]})" if added[c][1] else ")")
        for c in absent
    ]
    defaults = [added[c][1] for c in absent if added[c][1]]
    if not defaults:
        return passed(
            f"{label}: nothing can conflict: {', '.join(new)} is new and has no default, so "
            "every existing row holds NULL there, and NULLs never conflict in a UNIQUE"
        )
    present = [c for c in spec.columns if c in columns]
    if present and all(_CONSTANT.match(d) for d in defaults):
        # Every existing row gets the same constant: duplicates are those of the rest.
        return _duplicates(connection, spec, tuple(present), limit, label, new)
    return passed(
        f"{label}: could not be checked on today's rows: {', '.join(new)} gets a default "
        "computed at upgrade time, so the keys only exist after the upgrade (step 1.3 then "
        "proves the constraint)"
    )


def _duplicates(
    connection: Connection,
    spec: UniqueSpec,
    keys_checked: Sequence[str],
    limit: int,
    label: str,
    new: Sequence[str] = (),
) -> CheckResult:
    quote = connection.dialect.identifier_preparer.quote
    keys = ", ".join(quote(c) for c in keys_checked)
    table = ".".join(quote(part) for part in spec.table.split("."))
    sql = (
        f"SELECT count(*) OVER () AS groups, count(*) AS copies, {keys} FROM {table} "
        f"WHERE {' AND '.join(f'{quote(c)} IS NOT NULL' for c in keys_checked)} "
        f"GROUP BY {keys} HAVING count(*) > 1 ORDER BY copies DESC, {keys} LIMIT :limit"
    )
    rows = connection.execute(text(sql), {"limit": limit}).all()
    scope = f" (over {', '.join(keys_checked)}: {', '.join(new)} is one constant)" if new else ""
    record = Evidence(f"duplicate groups for {label}", sql)
    if not rows:
        return passed(f"{label}: no duplicate groups{scope}", record)
    worst = [
        f"{row.copies} rows: "
        + ", ".join(f"{c}={str(v)[:80]!r}" for c, v in zip(keys_checked, row[2:], strict=True))
        for row in rows
    ]
    return failed(
        Failure(
            f"{rows[0].groups} duplicate group(s) would make the UNIQUE on {spec.table} fail",
            expected=f"no two rows of {spec.table} share ({', '.join(spec.columns)})",
            seen=f"{rows[0].groups} group(s){scope}; the worst {len(rows)}:\n" + "\n".join(worst),
            remedy=(
                "Do not run the upgrade yet: resolve the duplicates first (keep one row per key, "
                "per the reconciliation owners' rule), rerun this pre-flight, then upgrade."
            ),
        ),
        record,
        Evidence("worst duplicate groups (keys only)", "\n".join(worst)),
    )


# --- lock and rewrite hazards -------------------------------------------------------------


@dataclass(frozen=True)
class Hazard:
    revision: str
    rule: str
    message: str
    statement: str
    table: str | None  # None: squawk's statement names no table we could read
    rows: int  # live estimate (pg_class.reltuples), -1 unknown
    bytes: int

    def line(self) -> str:
        size = f"~{self.rows} rows, {self.bytes} bytes" if self.table else "table unknown"
        return f"{self.revision}: [{self.rule}] on {self.table or '?'} ({size}): {self.statement}"


_TABLE_SIZE = text(
    "SELECT c.reltuples::bigint AS rows, pg_total_relation_size(c.oid) AS bytes "
    "FROM pg_class c WHERE c.oid = to_regclass(:table)"
)


def squawk_binary() -> str | None:
    beside = Path(sys.executable).parent / "squawk"
    return str(beside) if beside.is_file() else shutil.which("squawk")


def check_lock_hazards(
    connection: Connection, pending: PendingUpgrade, settings: ForensicsConfig
) -> CheckResult:
    """squawk on the rendered pending SQL; a lock finding on a table the catalog shows large
    (reltuples or total size over the thresholds) fails. Revisions that cannot be rendered
    offline are named, not guessed at."""
    rendered = pending.sql
    not_linted = pending.not_linted()
    binary = squawk_binary()
    if binary is None:
        return failed(
            Failure(
                "squawk is not installed: the pending migrations cannot be linted",
                expected="the squawk binary (PyPI squawk-cli) beside Python or on PATH",
                seen="no squawk binary",
                remedy="pip install squawk-cli",
            )
        )
    if not rendered:
        return passed(
            "; ".join(["no pending statement to lint", *not_linted]),
            *_unrendered_evidence(pending),
        )
    version = connection.execute(text("SHOW server_version")).scalar_one().split()[0]
    with tempfile.TemporaryDirectory(prefix="ledger-rollout-squawk-") as folder:
        files = {}
        for index, (rev, sql) in enumerate(rendered.items()):
            path = Path(folder) / f"{index:04d}.sql"
            path.write_text(sql, encoding="utf-8")
            files[str(path)] = rev
        run = subprocess.run(
            [binary, "--reporter", "json", f"--pg-version={version}", *files],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    try:
        findings = json.loads(run.stdout or "[]")
    except json.JSONDecodeError:
        findings = None
    if not isinstance(findings, list):
        return failed(
            Failure(
                "squawk gave no readable answer",
                expected="a JSON list of findings",
                seen=f"exit {run.returncode}: {(run.stdout + run.stderr)[:1000]}",
                remedy="Check the squawk-cli install (`squawk --version`).",
            )
        )
    created = {m.strip('"') for sql in rendered.values() for m in _CREATE_TABLE.findall(sql)}
    hazards = []
    for finding in findings:
        if finding.get("rule_name") not in LOCK_RULES:
            continue
        revision = files[finding["file"]]
        statement = _statement_at(rendered[revision], int(finding["line"]))
        match = _TABLE.match(statement)
        table = match.group(1).strip('"') if match else None
        if table in created:
            continue  # created by the pending migrations themselves: empty, nobody waits on it
        rows, size = (0, 0)
        if table is not None:
            found = connection.execute(_TABLE_SIZE, {"table": table}).first()
            rows, size = (found.rows, found.bytes) if found else (0, 0)
        hazards.append(
            Hazard(revision, finding["rule_name"], finding["message"], statement, table, rows, size)
        )
    large = [h for h in hazards if _is_large(h, settings)]
    record = Evidence(
        f"squawk {version} on the pending SQL ({len(rendered)} revision(s))",
        "\n".join(h.line() for h in hazards) or "no lock or rewrite finding",
    )
    sql_record = Evidence("pending SQL (alembic upgrade --sql)", "".join(rendered.values()))
    if not large:
        return passed(
            "; ".join(
                [
                    f"{len(hazards)} lock finding(s), none on a large table "
                    f"(>= {settings.large_table_rows} rows or {settings.large_table_bytes} bytes)",
                    *not_linted,
                ]
            ),
            record,
            sql_record,
            *_unrendered_evidence(pending),
        )
    return failed(
        Failure(
            f"{len(large)} pending statement(s) would hold a long lock on a large table",
            expected=(
                f"no long exclusive lock or rewrite on tables of >= {settings.large_table_rows} "
                f"rows or {settings.large_table_bytes} bytes"
            ),
            seen="\n".join(f"{h.line()}\n    {h.message}" for h in large),
            remedy=(
                "Rewrite those steps before the upgrade: CREATE INDEX CONCURRENTLY (outside the "
                "transaction: op.get_context().autocommit_block()), ADD CONSTRAINT … NOT VALID "
                "then VALIDATE CONSTRAINT, UNIQUE via a concurrent unique index + ADD CONSTRAINT "
                "… USING INDEX, new columns nullable or with a constant default; or schedule "
                "the upgrade in a maintenance window."
            ),
        ),
        record,
        sql_record,
        *_unrendered_evidence(pending),
    )


def _unrendered_evidence(pending: PendingUpgrade) -> list[Evidence]:
    if not pending.unrendered:
        return []
    body = "\n".join(
        f"{line}\n    offline rendering: {pending.unrendered[rev]}"
        for rev, line in zip(pending.unrendered, pending.not_linted(), strict=True)
    )
    return [Evidence("pending revisions not linted (they read data)", body)]


def _is_large(hazard: Hazard, settings: ForensicsConfig) -> bool:
    if hazard.table is None:
        return True  # fail closed: a lock on a table we cannot size
    return hazard.rows >= settings.large_table_rows or hazard.bytes >= settings.large_table_bytes


def _statement_at(sql: str, line: int) -> str:
    """The ';'-terminated statement that covers 0-based ``line`` of ``sql``, on one line."""
    end = 0
    for chunk in sql.split(";"):
        end += chunk.count("\n")
        if end >= line:
            body = [ln for ln in chunk.splitlines() if ln.strip() and not ln.startswith("--")]
            return " ".join(" ".join(body).split())
    return ""


# --- downgrades ---------------------------------------------------------------------------


def check_downgrades(project: AlembicProject, pending: Sequence[str]) -> CheckResult:
    """Step 1.4 promises a rollback: every pending revision's downgrade() must do something."""
    problems, lines = [], []
    for rev in pending:
        path = Path(str(project.script.get_revision(rev).path))
        verdict = _downgrade_verdict(path)
        lines.append(f"{rev}: {verdict or 'has a downgrade'} ({path.name})")
        if verdict:
            problems.append(f"{rev}: downgrade() {verdict} ({path.name})")
    record = Evidence("downgrade() of each pending revision", "\n".join(lines) or "(none pending)")
    if not problems:
        return passed(f"{len(pending)} pending revision(s) have a downgrade", record)
    return failed(
        Failure(
            f"{len(problems)} pending revision(s) cannot be rolled back",
            expected="every pending revision's downgrade() reverts its upgrade()",
            seen="\n".join(problems),
            remedy=(
                "Write the downgrade() before the RC (step 1.4's smoke and the rollback "
                "procedure depend on it), or record the accepted risk as a waiver."
            ),
        ),
        record,
    )


def _downgrade_verdict(path: Path) -> str | None:
    """None when downgrade() reverts something (or upgrade() does nothing either, as in a merge
    revision); else what is wrong with it."""
    module = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bodies = {
        n.name: [s for s in n.body if not _is_constant(s)]  # docstrings and ``...``
        for n in module.body
        if isinstance(n, ast.FunctionDef) and n.name in ("upgrade", "downgrade")
    }
    downgrade = bodies.get("downgrade")
    if downgrade is None:
        return "is missing"
    if any(isinstance(s, ast.Raise) for s in downgrade):
        return "raises"
    upgrade_does_something = not all(isinstance(s, ast.Pass) for s in bodies.get("upgrade", []))
    if upgrade_does_something and all(isinstance(s, ast.Pass) for s in downgrade):
        return "is empty (pass)"
    return None


def _is_constant(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)


def check_downgrades_proven(history: History, revisions: Sequence[str]) -> CheckResult:
    """Each revision's downgrade, run on the walk's throwaway database from head, restores the
    fingerprint of the revision it goes back to (pytest-alembic's up/down consistency)."""
    unproven = DowngradeProof(
        False, "not proven: a downgrade above it failed or did not restore its parent"
    )
    lines, problems, failing = [], [], []
    for rev in reversed(revisions):
        proof = history.downgrades.get(rev, unproven)
        lines.append(f"{rev}: {proof.detail}")
        if not proof.holds:
            problems.append(lines[-1])
            failing.append(rev)
    record = Evidence("downgrades replayed from head on a throwaway database", "\n".join(lines))
    if not problems:
        return passed(f"{len(revisions)} revision(s) downgrade to their parent's schema", record)
    return failed(
        Failure(
            f"{len(problems)} upgraded revision(s) do not downgrade to their parent's schema",
            expected="each revision's downgrade() restores exactly the schema before it",
            seen="\n".join(problems),
            remedy=(
                f"Fix the downgrade() of {failing[0]} first (the walk stops at "
                "the first that fails), rerun; or record the accepted risk as a waiver."
            ),
        ),
        record,
    )


@dataclass(frozen=True)
class ForensicsConfig:
    ignore_tables: tuple[str, ...] = ()  # fnmatch patterns: tables owned by other services
    snapshot: Path | None = None  # fingerprint snapshot, used instead of an ephemeral walk
    large_table_rows: int = 100_000  # a lock finding on a table this big fails the pre-flight
    large_table_bytes: int = 1 << 30  # ... or this big (covers never-analyzed tables)
    duplicate_groups_shown: int = 10
