"""Which revision the target's schema really matches, drift after head, and the exact remedy.

Read-only: the target is only fingerprinted (catalog queries), so the PRD phases use the same
checks; what differs per target kind is the remedy (production is never stamped or reset)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.fingerprint import Difference, Fingerprint, fingerprint
from pytest_ledger_rollout.checks.forensics.history import History
from pytest_ledger_rollout.checks.forensics.snapshot import cached_history
from pytest_ledger_rollout.checks.migrations import AlembicProject, StampHint
from pytest_ledger_rollout.results import (
    CheckResult,
    Evidence,
    Failure,
    failed,
    passed,
    table_evidence,
)
from pytest_ledger_rollout.targets.kinds import PRODUCTION

BASE = "base"  # the empty schema before the first revision


@dataclass(frozen=True)
class SchemaState:
    claimed: tuple[str, ...]  # what alembic_version says
    matched: tuple[str, ...]  # revisions whose schema equals the target's, oldest first
    nearest: str  # the revision with the fewest differences (a match when there is one)
    against_claimed: tuple[Difference, ...]  # target vs the claimed revision's schema
    against_nearest: tuple[Difference, ...]
    compared: int  # objects in the target's fingerprint

    @property
    def claimed_label(self) -> str:
        return ", ".join(self.claimed) or f"{BASE} (no alembic_version row)"


def read_state(
    history: History, live: Fingerprint, claimed: Sequence[str], ignore_tables: Sequence[str]
) -> SchemaState:
    live = live.without(ignore_tables)
    schemas = {BASE: history.base.without(ignore_tables)} | {
        rev: history.fingerprints[rev].without(ignore_tables) for rev in history.order
    }
    differences = {rev: schema.differences(live) for rev, schema in schemas.items()}
    matched = tuple(rev for rev in schemas if not differences[rev])
    # Ties go to the newest revision: the one the most of the history agrees with.
    nearest = matched[0] if matched else min(reversed(schemas), key=lambda r: len(differences[r]))
    reference = claimed_revision(claimed, schemas.keys())
    return SchemaState(
        claimed=tuple(claimed),
        matched=matched,
        nearest=nearest,
        against_claimed=differences[reference] if reference else (),
        against_nearest=differences[nearest],
        compared=len(live.objects),
    )


def claimed_revision(claimed: Sequence[str], known: Iterable[str]) -> str | None:
    """The one revision alembic_version names (base when empty), if this history knows it."""
    revision = claimed[0] if len(claimed) == 1 else BASE if not claimed else None
    return revision if revision in set(known) else None


def difference_table(differences: Sequence[Difference], revision: str) -> Evidence:
    """The differences as a static table in the report (tab-separated, header first)."""
    return table_evidence(
        f"schema differences, target vs {revision}",
        ("change", "kind", "name", f"at {revision}", "in the target"),
        ((d.change, d.kind, d.name, d.expected, d.seen) for d in differences),
    )


def check_schema_state(state: SchemaState, kind: str) -> CheckResult:
    """Runbook 1.1/1.2: the schema is the one alembic_version claims; else name the revision it
    does match and the exact, kind-appropriate remedy."""
    facts = {
        "schema matches revision (before the upgrade)": ", ".join(state.matched)
        or f"none (nearest {state.nearest})",
        "alembic_version claims (before the upgrade)": state.claimed_label,
    }
    summary = Evidence(
        "schema forensics",
        f"alembic_version claims: {state.claimed_label}\n"
        f"schema matches: {', '.join(state.matched) or 'no revision'}\n"
        f"nearest revision: {state.nearest} ({len(state.against_nearest)} difference(s))\n"
        f"objects compared: {state.compared}",
    )
    if claimed_revision(state.claimed, state.matched) is not None:
        return passed(
            f"schema matches the claimed revision {state.claimed_label} ({state.compared} objects)",
            summary,
            **facts,
        )
    tables = [difference_table(state.against_claimed, state.claimed_label)]
    if state.against_nearest and state.nearest not in state.claimed:
        tables.append(difference_table(state.against_nearest, state.nearest))
    if state.matched:
        stamp = state.matched[0]
        title = (
            f"The schema matches revision {stamp}, but alembic_version says {state.claimed_label}"
        )
        proof = (
            f"Why {stamp} is safe to stamp: the target's schema equals {stamp}'s fingerprint "
            f"object for object ({state.compared} objects: tables, columns with type, "
            "nullability and default, constraints, indexes, sequences, enum types; 0 "
            f"differences), so the upgrade continues from exactly the schema the revisions "
            f"after {stamp} expect."
        )
        staging = (
            "On staging only, one of the runbook's two options:\n"
            "1. Preferred: reset the staging database, then `alembic upgrade head`.\n"
            f"2. Controlled: `alembic stamp {stamp}` then `alembic upgrade head`.\n" + proof
        )
    elif state.nearest in state.claimed and all(
        d.change == "extra" and d.kind in ("index", "constraint") for d in state.against_nearest
    ):
        # Only indexes or constraints added to the claimed revision: drop them, not a reset.
        title = (
            f"The schema is revision {state.nearest} plus {len(state.against_nearest)} object(s) "
            "made by hand"
        )
        staging = (
            "Either make each addition official in a new migration (then regenerate the "
            "fingerprint snapshot, if one is configured), or revert it on the target:\n"
            + revert_statements(state.against_nearest)
        )
    else:
        title = f"The schema matches no revision (nearest: {state.nearest})"
        staging = (
            "On staging only: reset the staging database, then `alembic upgrade head`. No "
            f"revision can be stamped safely: even the nearest, {state.nearest}, differs in "
            f"{len(state.against_nearest)} object(s) (table below); make them match it by "
            f"hand first, rerun this check, and stamp only when it names a match."
        )
    # A claimed revision of this history that is no match always differs in something.
    unknown = "" if state.against_claimed else " (not one revision of this history)"
    seen = [f"alembic_version says {state.claimed_label}{unknown}"] + [
        d.line() for d in state.against_claimed
    ]
    if not state.matched:
        seen += [f"vs nearest {state.nearest}:"] + [d.line() for d in state.against_nearest]
    remedy = (
        "Production is never stamped or reset by this suite: attach this report to the RC; the "
        "database owners decide, on these facts."
        if kind == PRODUCTION
        else staging
    )
    return failed(
        Failure(
            title,
            expected=f"the schema equals the claimed revision {state.claimed_label}",
            seen="\n".join(seen),
            remedy=remedy,
        ),
        summary,
        *tables,
        **facts,
    )


def check_drift_at_head(
    history: History, live: Fingerprint, current: Sequence[str], ignore_tables: Sequence[str]
) -> CheckResult:
    """Runbook 1.3: at head, the schema is exactly the head fingerprint (nothing by hand)."""
    heads = [
        rev for rev in history.order if rev not in {p for d in history.parents.values() for p in d}
    ]
    if len(heads) != 1 or tuple(current) != (heads[0],):
        return failed(
            Failure(
                "The drift check needs the target at the single head",
                expected=f"current = {', '.join(heads)}",
                seen=f"current = {', '.join(current) or '(empty)'}",
                remedy="Make step 1.2 pass first (upgrade to head).",
            )
        )
    head = heads[0]
    differences = (
        history.fingerprints[head].without(ignore_tables).differences(live.without(ignore_tables))
    )
    ignored = f" (ignoring {', '.join(ignore_tables)})" if ignore_tables else ""
    if not differences:
        return passed(
            f"schema equals the head fingerprint of {head}{ignored}",
            Evidence("drift at head", f"{len(live.objects)} objects compared, 0 differences"),
        )
    return failed(
        Failure(
            f"{len(differences)} schema difference(s) from head {head} made outside the migrations",
            expected=f"the schema exactly as the migrations leave it at {head}{ignored}",
            seen="\n".join(d.line() for d in differences),
            remedy=(
                "Each difference was made by hand. Either make it official in a new migration "
                "(and regenerate the fingerprint snapshot), or revert it on the target:\n"
                + revert_statements(differences)
                + "\nTables owned by another service belong in [forensics] ignore_tables."
            ),
        ),
        difference_table(differences, head),
    )


def revert_statements(differences: Sequence[Difference]) -> str:
    """The exact statement that reverts each difference, where one is safe to name."""
    lines = []
    for d in differences:
        table, _, member = d.name.rpartition(".")
        if d.change == "extra" and d.kind == "index":
            lines.append(f"    DROP INDEX CONCURRENTLY {d.name};")
        elif d.change == "extra" and d.kind == "constraint":
            lines.append(f"    ALTER TABLE {table} DROP CONSTRAINT {member};")
        elif d.change == "missing" and d.kind == "index":
            lines.append(f"    {d.expected.replace(' INDEX ', ' INDEX CONCURRENTLY ', 1)};")
        else:
            lines.append(f"    {d.line()}: restore the definition shown for the revision by hand")
    return "\n".join(lines)


def stamp_hint(history: History | None, live: Fingerprint, claimed: Sequence[str]) -> str | None:
    """One line naming the revision to stamp, when the fingerprints prove one (else None)."""
    if history is None:
        return None
    state = read_state(history, live, claimed, ())
    if not state.matched or claimed_revision(claimed, state.matched):
        return None
    return (
        f"The schema matches revision {state.matched[0]} exactly ({state.compared} objects, "
        f"0 differences): the revision to stamp is {state.matched[0]} "
        f"(`alembic stamp {state.matched[0]}` then `alembic upgrade head`)."
    )


def live_stamp_hint(project: AlembicProject, connection: Connection) -> StampHint:
    """``check_upgrade_head``'s stamp hint: this process's walk against the live schema
    (read-only, no new walk)."""
    return lambda claimed: stamp_hint(cached_history(project), fingerprint(connection), claimed)
