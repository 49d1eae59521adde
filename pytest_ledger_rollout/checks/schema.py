"""Step 1.3's declared UNIQUE constraints: one table's columns and its UNIQUE constraints vs
unique indexes, read from the catalog. The whole schema, read and compared, is the fingerprint
(checks/fingerprint.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection

from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed

_TABLE_COLUMNS = text(
    """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
    FROM pg_attribute a
    WHERE a.attrelid = to_regclass(:table) AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum
    """
)

# UNIQUE constraints (contype 'u') and unique indexes that back no constraint, with their
# column lists in key order.
_UNIQUES = text(
    """
    SELECT 'constraint' AS kind, c.conname AS name, pg_get_constraintdef(c.oid) AS definition,
           ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                 ORDER BY k.ord) AS columns
    FROM pg_constraint c
    WHERE c.conrelid = to_regclass(:table) AND c.contype = 'u'
    UNION ALL
    SELECT 'index', i.relname, pg_get_indexdef(x.indexrelid),
           ARRAY(SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                 ORDER BY k.ord)
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid = to_regclass(:table) AND x.indisunique AND NOT x.indisprimary
      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
    ORDER BY 1, 2
    """
)


@dataclass(frozen=True)
class UniqueObject:
    kind: str  # "constraint" or "index"
    name: str
    definition: str
    columns: tuple[str, ...]


def table_columns(connection: Connection, table: str) -> list[tuple[str, str, bool]]:
    return [(r[0], r[1], r[2]) for r in connection.execute(_TABLE_COLUMNS, {"table": table})]


def unique_objects(connection: Connection, table: str) -> list[UniqueObject]:
    rows = connection.execute(_UNIQUES, {"table": table})
    return [UniqueObject(r.kind, r.name, r.definition, tuple(r.columns)) for r in rows]


def check_unique_constraint(connection: Connection, spec: UniqueSpec) -> CheckResult:
    """Runbook 1.3: the table exists and a UNIQUE constraint covers exactly the columns."""
    wanted = f"UNIQUE ({', '.join(spec.columns)})" + (f" named {spec.name}" if spec.name else "")
    columns = table_columns(connection, spec.table)
    if not columns:
        return failed(
            Failure(
                f"Table {spec.table} does not exist",
                expected=f"table {spec.table} with {wanted}",
                seen=f"to_regclass('{spec.table}') is NULL in database {_db(connection)}",
                remedy="Run step 1.2 (`alembic upgrade head`) and check that it reached head.",
            ),
            Evidence("to_regclass", f"{spec.table}: not found"),
        )
    uniques = unique_objects(connection, spec.table)
    evidence = (
        Evidence(
            f"\\d {spec.table}",
            "\n".join(f"{n} {t}{' NOT NULL' if nn else ''}" for n, t, nn in columns),
        ),
        Evidence(
            f"unique constraints and indexes on {spec.table}",
            "\n".join(f"{u.kind} {u.name}: {u.definition}" for u in uniques) or "(none)",
        ),
    )
    covering = [u for u in uniques if set(u.columns) == set(spec.columns)]
    constraints = [u for u in covering if u.kind == "constraint"]
    named = [u for u in constraints if spec.name in (None, u.name)]
    if named:
        found = named[0]
        return passed(f"{found.name}: {found.definition}", *evidence)
    seen_lines = [f"{u.kind} {u.name}: {u.definition}" for u in uniques] or [
        f"no UNIQUE constraint and no unique index on {spec.table}"
    ]
    if constraints:
        title = f"The UNIQUE constraint on {spec.table} has another name"
        remedy = (
            f"Rename it (`ALTER TABLE {spec.table} RENAME CONSTRAINT {constraints[0].name} TO "
            f"{spec.name}`) in a migration, or correct [[schema.unique]] name."
        )
    elif covering:
        index = covering[0]
        title = f"{spec.table} has a unique index, not a UNIQUE constraint"
        remedy = (
            f"The runbook checks pg_constraint (contype 'u'); {index.name} is only an index. "
            f"Attach it in a migration: `ALTER TABLE {spec.table} ADD CONSTRAINT "
            f"{spec.name or index.name} UNIQUE USING INDEX {index.name}`."
        )
    else:
        title = f"{spec.table} has no UNIQUE constraint over ({', '.join(spec.columns)})"
        remedy = (
            "The migration that adds it has not run, or was changed: check step 1.2 and the "
            "revision that creates the constraint."
        )
    return failed(
        Failure(title, expected=wanted, seen="\n".join(seen_lines), remedy=remedy), *evidence
    )


def _db(connection: Connection) -> str:
    return str(connection.engine.url.database)


@dataclass(frozen=True)
class UniqueSpec:
    table: str
    columns: tuple[str, ...]
    name: str | None = None
