"""The runbook's phases and steps: ids, titles, which target kinds a phase may run against."""

from __future__ import annotations

from dataclasses import dataclass

EPHEMERAL, STAGING, PRODUCTION = "ephemeral", "staging", "production"
TARGET_KINDS = (EPHEMERAL, STAGING, PRODUCTION)
# Kinds on which upgrade / downgrade / stamp may ever run.
DESTRUCTIVE_KINDS = frozenset({EPHEMERAL, STAGING})


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    waivable: bool = True  # the phase chain is not: a waiver must not stand in for a sign-off


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    allowed_kinds: frozenset[str]
    steps: tuple[Step, ...]  # every step is part of the phase's definition of done
    # An ephemeral target starts at the deployed revision for the migration gate (so the
    # suite walks the real path to head), and at head for the later phases.
    ephemeral_at_baseline: bool = False
    # Production phases read only, even on a throwaway target (the rehearsal proves it).
    read_only: bool = False
    decides: bool = False  # ends with GO / HOLD / ROLLBACK (the pilot's OPS-02 decision)

    def session_kind(self, target_kind: str) -> str:
        """The safety policy a session gets: a production phase's is always production's."""
        return PRODUCTION if self.read_only else target_kind

    @property
    def package(self) -> str:
        return self.name.replace("-", "_")

    def step(self, step_id: str) -> Step | None:
        return next((step for step in self.steps if step.id == step_id), None)


PHASES: dict[str, Phase] = {
    phase.name: phase
    for phase in (
        Phase(
            "stg-mig",
            "STG-MIG: verify migrations on staging Postgres",
            frozenset({EPHEMERAL, STAGING}),
            (
                Step("1.1", "Connected to the right DB; Alembic current and history as expected"),
                Step("1.2", "alembic upgrade head succeeds"),
                Step("1.3", "Table and UNIQUE constraint verified in Postgres"),
                Step("1.4", "Downgrade / upgrade smoke (staging only)"),
            ),
            ephemeral_at_baseline=True,
        ),
        Phase(
            "stg-roll",
            "STG-ROLL: staging rollout",
            frozenset({EPHEMERAL, STAGING}),
            (
                Step("2.0", "STG-MIG signed off (PASS) for this head and release", waivable=False),
                Step("2.1", "Telemetry and shadow-write flags on"),
                Step("2.2", "OPS-01 backfill leaves no mismatch"),
                Step("2.3", "Webhook signature enforcement without a 401 surge"),
                Step("2.4", "Enforce balance on; withdrawals smoke"),
            ),
        ),
        Phase(
            "prd-pilot",
            "PRD-PILOT: production pilot rollout",
            frozenset({EPHEMERAL, PRODUCTION}),
            (
                Step("3.0", "STG-ROLL signed off (PASS) for this head and release", waivable=False),
                Step("3.1", "Pilot tenant selection"),
                Step("3.2", "Pilot backfill, signature and enforce"),
                Step("3.3", "OPS-02 decision matrix"),
            ),
            read_only=True,
            decides=True,
        ),
        Phase(
            "prd-ga",
            "PRD-GA: gradual expansion",
            frozenset({EPHEMERAL, PRODUCTION}),
            (
                Step("4.0", "PRD-PILOT signed off (GO) for this head and release", waivable=False),
                Step("4.1", "Rollout widened tenant by tenant; every enabled tenant clean"),
                Step("4.2", "Rollback procedure ready (OPS-02)"),
                Step("4.3", "Enforce in general use; decision signals clean"),
            ),
            read_only=True,
        ),
    )
}
