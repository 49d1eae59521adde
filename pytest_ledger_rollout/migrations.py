"""Alembic through its Python API: history, heads, current revision, upgrade and downgrade on a
connection the plugin owns (so session timeouts and the migration lock apply)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from .config import UniqueSpec
from .results import CheckResult, Evidence, Failure, failed, passed
from .schema import check_unique_constraint, snapshot


@dataclass(frozen=True)
class Revision:
    id: str
    down: tuple[str, ...]


class AlembicProject:
    def __init__(self, alembic_ini: Path) -> None:
        self.alembic_ini = alembic_ini
        self.script = ScriptDirectory.from_config(self._config())

    def _config(self, connection: Connection | None = None) -> Config:
        config = Config(str(self.alembic_ini))
        if connection is not None:
            config.attributes["connection"] = connection
            # env.py files that ignore the handed-in connection build their own engine from the
            # URL; configparser interpolation needs every % doubled.
            url = connection.engine.url.render_as_string(hide_password=False)
            config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        return config

    def heads(self) -> tuple[str, ...]:
        return tuple(self.script.get_heads())

    def revisions(self) -> tuple[Revision, ...]:
        """Every revision, newest first."""
        return tuple(
            Revision(script.revision, _as_tuple(script.down_revision))
            for script in self.script.walk_revisions()
        )

    def chain_to(self, head: str) -> tuple[str, ...]:
        """Revision ids from the base to ``head`` following first parents (oldest first)."""
        by_id = {revision.id: revision for revision in self.revisions()}
        chain: list[str] = []
        current: str | None = head
        while current is not None:
            chain.append(current)
            down = by_id[current].down
            current = down[0] if down else None
        return tuple(reversed(chain))

    def down_revision(self, revision: str) -> str | None:
        down = _as_tuple(self.script.get_revision(revision).down_revision)
        return down[0] if down else None

    def current(self, connection: Connection) -> tuple[str, ...]:
        return tuple(MigrationContext.configure(connection).get_current_heads())

    def upgrade(self, connection: Connection, revision: str = "head") -> None:
        self._run(connection, command.upgrade, revision)

    def downgrade(self, connection: Connection, revision: str) -> None:
        self._run(connection, command.downgrade, revision)

    def _run(self, connection: Connection, step: Callable[[Config, str], None], rev: str) -> None:
        # Alembic leaves a transaction that was already open to its owner: commit or roll back.
        try:
            step(self._config(connection), rev)
        except BaseException:
            if connection.in_transaction():
                connection.rollback()
            raise
        if connection.in_transaction():
            connection.commit()


def _as_tuple(down: str | Sequence[str] | None) -> tuple[str, ...]:
    if down is None:
        return ()
    if isinstance(down, str):
        return (down,)
    return tuple(down)


def check_single_head(project: AlembicProject) -> CheckResult:
    heads = project.heads()
    evidence = Evidence("alembic heads", "\n".join(heads) or "(none)")
    if len(heads) == 1:
        return passed(f"one head: {heads[0]}", evidence)
    if not heads:
        return failed(
            Failure(
                "The migration history has no head",
                expected="exactly one head revision",
                seen=f"no revisions under {project.script.dir}",
                remedy="Check [migrations] alembic_ini: point it at the backend's alembic.ini.",
            ),
            evidence,
        )
    return failed(
        Failure(
            f"The migration history has {len(heads)} heads",
            expected="exactly one head revision",
            seen="heads: " + ", ".join(heads),
            remedy=(
                "Merge them before the RC: `alembic merge -m 'merge heads' "
                + " ".join(heads)
                + "`, review, and update [migrations] expected_chain."
            ),
        ),
        evidence,
    )


def check_history_chain(project: AlembicProject, expected: Sequence[str]) -> CheckResult:
    """The history ending at head must be exactly ``expected`` (the runbook's chain)."""
    heads = project.heads()
    rendered_expected = " -> ".join(expected) + " (head)"
    if len(heads) != 1:
        return failed(
            Failure(
                "The history chain cannot be read: the history does not have exactly one head",
                expected=rendered_expected,
                seen="heads: " + (", ".join(heads) or "(none)"),
                remedy="Resolve the heads first (see the single-head check).",
            )
        )
    chain = project.chain_to(heads[0])
    tail = chain[-len(expected) :]
    evidence = Evidence("alembic history (base -> head)", "\n".join(chain))
    if tuple(tail) == tuple(expected):
        return passed(" -> ".join(tail) + " (head)", evidence)
    unknown = [rev for rev in expected if rev not in chain]
    return failed(
        Failure(
            "The history chain ending at head differs from the expected chain",
            expected=rendered_expected,
            seen=" -> ".join(tail)
            + " (head)"
            + (f"\nnot in the history at all: {', '.join(unknown)}" if unknown else ""),
            remedy=(
                "Either the backend ships other migrations than this RC expects (check out the "
                "RC's backend revision), or [migrations] expected_chain is out of date."
            ),
        ),
        evidence,
    )


def check_current_not_empty(project: AlembicProject, connection: Connection) -> CheckResult:
    current = project.current(connection)
    evidence = Evidence("alembic current", "\n".join(current) or "(empty)")
    if current:
        return passed(
            "current: " + ", ".join(current), evidence, **{"alembic current": ",".join(current)}
        )
    return failed(
        Failure(
            "`alembic current` is empty: this database has no Alembic version",
            expected="alembic_version holds the deployed revision",
            seen="no row in alembic_version (or no alembic_version table)",
            remedy=(
                "Either this is not the backend's database (check DATABASE_URL), or its tables "
                "were created outside Alembic: see step 1.2's remedies (staging only)."
            ),
        ),
        evidence,
    )


def check_upgrade_head(project: AlembicProject, connection: Connection) -> CheckResult:
    """Runbook 1.2: `alembic upgrade head` finishes without error and current is head after."""
    before = project.current(connection)
    head = project.heads()[-1]
    if before == (head,):
        return passed(
            f"already at head: nothing to upgrade ({head})",
            Evidence("alembic upgrade head", f"current = {head} before the upgrade: nothing ran"),
            **{"alembic current": head},
        )
    try:
        project.upgrade(connection, "head")
    except Exception as exc:  # any failure of the upgrade is the finding
        message = " ".join(str(exc).split())
        evidence = Evidence(
            "alembic upgrade head", f"from {', '.join(before) or 'base'}\n{message}"
        )
        if "already exists" in message:
            return failed(_drift_failure(project, connection, before, message), evidence)
        return failed(
            Failure(
                "`alembic upgrade head` failed",
                expected=f"upgrade from {', '.join(before) or 'base'} to {head} without error",
                seen=message[:2000],
                remedy="Fix the failing migration and rerun; the database was rolled back.",
            ),
            evidence,
        )
    after = project.current(connection)
    evidence = Evidence(
        "alembic upgrade head", f"from {', '.join(before) or 'base'} to {', '.join(after)}"
    )
    if after != (head,):
        return failed(
            Failure(
                "After `alembic upgrade head` the database is not at head",
                expected=f"current = {head}",
                seen=f"current = {', '.join(after) or '(empty)'}",
                remedy="Check env.py: it must run the migrations on the connection handed in.",
            ),
            evidence,
        )
    return passed(
        f"upgraded {', '.join(before) or 'base'} -> {head}", evidence, **{"alembic current": head}
    )


def _drift_failure(
    project: AlembicProject, connection: Connection, before: tuple[str, ...], message: str
) -> Failure:
    claimed = ", ".join(before) or "base (no alembic_version row)"
    chain = project.chain_to(project.heads()[-1])
    pending = chain[chain.index(before[0]) + 1 :] if before and before[0] in chain else chain
    return Failure(
        "`alembic upgrade head` failed: an object it creates already exists",
        expected=f"the schema matches the claimed revision {claimed}, so the upgrade can run",
        seen=(
            f"{message[:600]}\n"
            f"alembic_version says {claimed}, but the schema already holds objects of a later "
            f"revision: they were created outside Alembic and alembic_version fell behind."
        ),
        remedy=(
            "On staging only (never on production), one of the runbook's two options:\n"
            "1. Preferred: reset the staging database, then a clean `alembic upgrade head`.\n"
            "2. Controlled: `alembic stamp <rev>` with <rev> the newest pending revision whose "
            "objects all exist already (check each one in psql first), then "
            "`alembic upgrade head`.\n"
            f"Pending revisions, oldest first: {', '.join(pending)}"
            + _stamp_hint(project, connection, before)
        ),
    )


def _stamp_hint(project: AlembicProject, connection: Connection, before: tuple[str, ...]) -> str:
    """The exact revision to stamp, when this run's fingerprints prove one (read-only)."""
    # Imported here: the forensics build on this module.
    from .forensics.fingerprint import fingerprint
    from .forensics.remedy import stamp_hint
    from .forensics.snapshot import cached_history

    hint = stamp_hint(cached_history(project), fingerprint(connection), before)
    return f"\n{hint}" if hint else ""


def check_downgrade_upgrade_smoke(
    project: AlembicProject, connection: Connection, uniques: Sequence[UniqueSpec]
) -> CheckResult:
    """Runbook 1.4: `alembic downgrade -1` then `alembic upgrade head`, each proven on the schema.

    The downgrade must really undo something (a downgrade that only moves alembic_version is
    no rollback), and the upgrade must restore the head schema exactly."""
    head = project.heads()[-1]
    previous = project.down_revision(head)
    before = project.current(connection)
    if before != (head,):
        return failed(
            Failure(
                "The smoke needs the database at head",
                expected=f"current = {head}",
                seen=f"current = {', '.join(before) or '(empty)'}",
                remedy="Make step 1.2 pass first.",
            )
        )
    at_head = snapshot(connection)
    steps: list[str] = []

    def failure(title: str, expected: str, seen: str) -> CheckResult:
        return failed(
            Failure(
                title,
                expected,
                seen,
                remedy=(
                    f"Fix the downgrade() of {head} so it reverts exactly what upgrade() does; "
                    "the rollback procedure depends on it. Rerun the smoke on staging."
                ),
            ),
            Evidence("downgrade -1 / upgrade head", "\n".join(steps)),
        )

    try:
        project.downgrade(connection, "-1")
    except Exception as exc:
        steps.append(f"alembic downgrade -1: {' '.join(str(exc).split())[:1500]}")
        return failure(
            "`alembic downgrade -1` failed", f"downgrade {head} -> {previous}", steps[-1]
        )
    after_down = project.current(connection)
    undone = at_head.difference(snapshot(connection))
    steps.append(f"alembic downgrade -1: current = {', '.join(after_down) or 'base'}")
    steps.extend(f"  {line}" for line in undone or ["(schema unchanged)"])
    down_state = _unique_states(connection, uniques)
    steps.extend(f"  {line}" for line in down_state)
    expected_down = (previous,) if previous else ()
    if after_down != expected_down:
        return failure(
            "After `alembic downgrade -1` the database is not at the previous revision",
            f"current = {previous or 'base'}",
            f"current = {', '.join(after_down) or 'base'}",
        )
    if not undone:
        return failure(
            "`alembic downgrade -1` changed no schema object",
            f"the downgrade of {head} reverts its schema changes",
            "the schema after the downgrade equals the schema at head",
        )
    try:
        project.upgrade(connection, "head")
    except Exception as exc:
        steps.append(f"alembic upgrade head: {' '.join(str(exc).split())[:1500]}")
        return failure(
            "`alembic upgrade head` after the downgrade failed", f"back at {head}", steps[-1]
        )
    after_up = project.current(connection)
    not_restored = at_head.difference(snapshot(connection))
    steps.append(f"alembic upgrade head: current = {', '.join(after_up) or 'base'}")
    steps.extend(f"  {line}" for line in _unique_states(connection, uniques))
    if after_up != (head,) or not_restored:
        return failure(
            "`alembic upgrade head` after the downgrade did not restore the head schema",
            f"current = {head} and the schema as it was at head",
            f"current = {', '.join(after_up) or 'base'}\n" + "\n".join(not_restored),
        )
    return CheckResult(
        summary=f"{head} -> {previous or 'base'} -> {head}; undone: {len(undone)} object(s)",
        evidence=(Evidence("downgrade -1 / upgrade head", "\n".join(steps)),),
    )


def _unique_states(connection: Connection, uniques: Sequence[UniqueSpec]) -> list[str]:
    lines = []
    for spec in uniques:
        result = check_unique_constraint(connection, spec)
        state = "present" if result.ok else "absent"
        lines.append(f"UNIQUE ({', '.join(spec.columns)}) on {spec.table}: {state}")
    return lines


def check_release_downgrades(
    project: AlembicProject, connection: Connection, revisions: Sequence[str]
) -> CheckResult:
    """OPS-02 rollback readiness, rehearsed on a throwaway database (never production): from
    head, each revision of the release is downgraded one step (proven on the schema), and the
    upgrade back to head restores the head schema exactly."""
    project.upgrade(connection, "head")
    at_head = snapshot(connection)
    head = project.heads()[-1]
    steps: list[str] = []
    for revision in reversed(revisions):
        before = snapshot(connection)
        previous = project.down_revision(revision)
        try:
            project.downgrade(connection, "-1")
        except Exception as exc:
            steps.append(f"downgrade {revision}: {' '.join(str(exc).split())[:600]}")
            return _rollback_not_ready(
                revision, f"`alembic downgrade -1` from {revision} failed", steps
            )
        current = project.current(connection)
        undone = before.difference(snapshot(connection))
        steps.append(
            f"downgrade {revision} -> {', '.join(current) or 'base'}: {len(undone)} change(s)"
        )
        if current != ((previous,) if previous else ()):
            return _rollback_not_ready(
                revision, f"after downgrading {revision}, current is {current}", steps
            )
        if not undone:
            return _rollback_not_ready(
                revision, f"the downgrade of {revision} changed no schema object", steps
            )
    project.upgrade(connection, "head")
    not_restored = at_head.difference(snapshot(connection))
    steps.append(f"upgrade head -> {head}: {len(not_restored)} difference(s) from the head schema")
    if not_restored:
        return _rollback_not_ready(head, "the upgrade back did not restore the head schema", steps)
    return passed(
        f"{len(revisions)} revision(s) of the release downgrade and upgrade cleanly "
        "(rehearsed on a throwaway database)",
        Evidence("downgrade rehearsal", "\n".join(steps)),
    )


def _rollback_not_ready(revision: str, seen: str, steps: list[str]) -> CheckResult:
    return failed(
        Failure(
            f"The release cannot be rolled back past {revision}",
            expected="each revision of this release downgrades; the upgrade back restores head",
            seen=seen,
            remedy=f"Fix the downgrade() of {revision} before widening the rollout (OPS-02).",
        ),
        Evidence("downgrade rehearsal", "\n".join(steps)),
    )
