"""The runbook's phases, each declared in one place: its step model (each step's packaged checks
with their roles, what each step needs), the target kinds it may run against, the predecessor
whose sign-off it builds on, how its embedded default is rehearsed, and its suite package.
Adding a phase means adding it here and its suite under ``suites/``.

The plugin orders and gates checks from this model only (never from file names or from the
order other plugins leave behind), and a step passes only when every check it requires ran and
passed. A team's own ``dod(...)`` checks may add to a step; they never stand in for a packaged
check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pytest_ledger_rollout.targets.kinds import (
    EPHEMERAL,
    EVERY_KIND,
    PRODUCTION,
    STAGING,
    TARGET_WORDS,
)


class Role(enum.StrEnum):
    """What a check does to the target, in the order a step runs them."""

    PROBE = "probe"  # reads what is there
    PREFLIGHT = "preflight"  # reads, before the step's action: a finding stops the action
    ACTION = "action"  # changes the target (upgrade, smoke); runs only when its gate is open
    VERIFICATION = "verification"  # reads what the step's action left


ROLE_ORDER = {role: index for index, role in enumerate(Role)}
# Roles a team's own check may take: actions belong to the packaged suites only.
TEAM_ROLES = (Role.PROBE, Role.PREFLIGHT, Role.VERIFICATION)


@dataclass(frozen=True)
class Check:
    """A packaged check: a test function of the phase's suite package, by name."""

    name: str
    role: Role = Role.PROBE
    needs: tuple[str, ...] = ()  # steps that must have passed, besides its step's needs
    # Target kinds on which the step requires it; elsewhere it may skip (it still fails the
    # step when it runs and fails).
    required_on: frozenset[str] = EVERY_KIND
    # False: its failure fails its step (and the verdict) but does not hold back the steps
    # that need its step, which still run and decide (their own pre-flights still gate them).
    holds_back: bool = True
    # False: no waiver of its step covers its failure.
    waivable: bool = True


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    checks: tuple[Check, ...]
    needs: tuple[str, ...] = ()  # steps that must have passed before any check of this step
    waivable: bool = True  # the phase chain is not: a waiver must not stand in for a sign-off

    def check(self, name: str) -> Check | None:
        return next((check for check in self.checks if check.name == name), None)

    def required(self, kind: str) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if kind in check.required_on)


class Needs(enum.StrEnum):
    """What a phase asks of its predecessor's sign-off."""

    PASS = "verdict PASS"
    GO = "decision GO"  # the predecessor decided GO (not a dry run), with a PASS


@dataclass(frozen=True)
class Predecessor:
    phase: str  # the name of the phase whose sign-off this phase builds on
    needs: Needs
    # Both phases run on one target: the predecessor's sign-off must be for this database.
    same_database: bool


class Rehearsal(enum.StrEnum):
    """What the embedded default (an ephemeral target) plays before a phase's checks."""

    NONE = "none"  # the checks run on the throwaway database as it is
    # Seed, start the service and a Prometheus, play Phase 2 through the service.
    STAGING_ROLLOUT = "staging rollout"
    PILOT_STATE = "pilot state"  # production's state with the pilot tenants flipped
    GA_STATE = "ga state"  # production's state with every declared wave flipped


@dataclass(frozen=True)
class Phase:
    name: str
    title: str  # with {target}: what the run is against, in words (see heading())
    allowed_kinds: frozenset[str]
    steps: tuple[Step, ...]  # every step is part of the phase's definition of done
    suite: str  # its package of checks under pytest_ledger_rollout.suites (suites/)
    predecessor: Predecessor | None = None  # the phase chain: whose sign-off it builds on
    rehearsal: Rehearsal = Rehearsal.NONE
    # An ephemeral target starts at the deployed revision for the migration gate (so the
    # suite walks the real path to head), and at head for the later phases.
    ephemeral_at_baseline: bool = False
    # Production phases read only, even on a throwaway target (the rehearsal proves it).
    read_only: bool = False
    # The step whose packaged check hands the run its OPS-02 decision: the phase ends with
    # GO / HOLD / ROLLBACK.
    decision_step: str | None = None
    # The step a refused identity or a failed connection fails (else the run is only stopped).
    identity_step: str | None = None
    # Signs webhooks against the target's service (the withdrawals smoke): a real target's
    # secret variable must be set before anything connects.
    signs_webhooks: bool = False

    def heading(self, target_kind: str) -> str:
        """The phase's title for a run on a target of this kind: a rehearsal never says
        staging or production."""
        return self.title.format(target=TARGET_WORDS[target_kind])

    def session_kind(self, target_kind: str) -> str:
        """The safety policy a session gets: a production phase's is always production's."""
        return PRODUCTION if self.read_only else target_kind

    @property
    def writes(self) -> bool:
        """Whether a run changes the target (so the whole phase runs under the lock)."""
        return not self.read_only

    @property
    def decides(self) -> bool:
        return self.decision_step is not None

    def step(self, step_id: str) -> Step | None:
        return next((step for step in self.steps if step.id == step_id), None)

    def packaged(self, name: str) -> tuple[Step, Check] | None:
        """The step and packaged check a suite function of this phase is."""
        for step in self.steps:
            check = step.check(name)
            if check is not None:
                return step, check
        return None


NOWHERE = frozenset[str]()  # optional everywhere (a team's configured extra)
SMOKE_NEEDS = ("2.0", "2.1", "2.2", "2.3")

PHASES: dict[str, Phase] = {
    phase.name: phase
    for phase in (
        Phase(
            "stg-mig",
            "STG-MIG: verify migrations on {target}",
            frozenset({EPHEMERAL, STAGING}),
            (
                Step(
                    "1.1",
                    "Connected to the right DB; Alembic current and history as expected",
                    (
                        Check("test_connected_to_expected_database"),
                        Check("test_alembic_current_not_empty"),
                        Check("test_history_has_one_head"),
                        Check("test_history_chain_is_expected"),
                        # Optional: a target without app_host/app_dir skips it (and says so).
                        Check("test_app_alembic_sees_same_database", required_on=NOWHERE),
                    ),
                ),
                Step(
                    "1.2",
                    "alembic upgrade head succeeds",
                    (
                        # The runbook's preferred remedy is a reset and a clean `upgrade head`:
                        # a history that cannot be replayed from empty (no base_schema) fails
                        # this step, waiver or not. The upgrade and smoke still run on staging,
                        # gated by their own pre-flights (the state pre-flight then rehearses
                        # the pending revisions on a copy of the target's schema), after a
                        # passed 1.1 as always.
                        Check(
                            "test_history_replays_on_a_fresh_database",
                            holds_back=False,
                            waivable=False,
                        ),
                        Check("test_schema_matches_claimed_revision", Role.PREFLIGHT),
                        Check("test_preflight_pending_ids_fit_version_table", Role.PREFLIGHT),
                        Check("test_preflight_unique_holds_on_todays_rows", Role.PREFLIGHT),
                        Check("test_preflight_no_long_locks_on_large_tables", Role.PREFLIGHT),
                        Check("test_upgrade_head", Role.ACTION),
                    ),
                    needs=("1.1",),
                ),
                Step(
                    "1.3",
                    "Table and UNIQUE constraint verified in Postgres",
                    (
                        Check("test_table_and_unique_constraint", Role.VERIFICATION),
                        Check("test_no_drift_at_head", Role.VERIFICATION),
                    ),
                    needs=("1.2",),
                ),
                Step(
                    "1.4",
                    "Downgrade / upgrade smoke",
                    (
                        Check("test_upgraded_revisions_have_downgrades", Role.PREFLIGHT),
                        Check("test_upgraded_revisions_downgrade_to_their_parents", Role.PREFLIGHT),
                        Check("test_downgrade_upgrade_smoke", Role.ACTION),
                    ),
                    needs=("1.1", "1.2", "1.3"),
                ),
            ),
            suite="stg_mig",
            ephemeral_at_baseline=True,
            identity_step="1.1",
        ),
        Phase(
            "stg-roll",
            "STG-ROLL: rollout on {target}",
            frozenset({EPHEMERAL, STAGING}),
            (
                Step(
                    "2.0",
                    "STG-MIG signed off (PASS) for this head and release",
                    (Check("test_stg_mig_signed_off"),),
                    waivable=False,
                ),
                Step(
                    "2.1",
                    "Telemetry and shadow-write flags on",
                    (Check("test_shadow_write_and_mismatch_log_on"),),
                ),
                Step(
                    "2.2",
                    "OPS-01 backfill leaves no mismatch",
                    (
                        Check("test_backfill_left_no_mismatch"),
                        Check("test_backfill_dry_run_has_nothing_left", required_on=NOWHERE),
                    ),
                ),
                Step(
                    "2.3",
                    "Webhook signature enforcement without a 401 surge",
                    (
                        Check("test_signature_enforcement_on"),
                        Check("test_no_webhook_401_surge_after_the_flip"),
                    ),
                ),
                Step(
                    "2.4",
                    "Enforce balance on; withdrawals smoke",
                    (
                        Check("test_enforce_balance_on", Role.PREFLIGHT),
                        Check("test_flags_flipped_in_runbook_order_after_the_backfill"),
                        # The smoke writes through the service: only after the chain and
                        # 2.1-2.3 passed. The reads above run regardless: staging only.
                        Check(
                            "test_withdrawals_smoke_with_enforcement_on",
                            Role.ACTION,
                            needs=SMOKE_NEEDS,
                        ),
                        Check(
                            "test_team_e2e_withdrawals_spec",
                            Role.ACTION,
                            needs=SMOKE_NEEDS,
                            required_on=NOWHERE,
                        ),
                    ),
                ),
            ),
            suite="stg_roll",
            predecessor=Predecessor("stg-mig", Needs.PASS, same_database=True),
            rehearsal=Rehearsal.STAGING_ROLLOUT,
            signs_webhooks=True,
        ),
        Phase(
            "prd-pilot",
            "PRD-PILOT: pilot rollout on {target}",
            frozenset({EPHEMERAL, PRODUCTION}),
            (
                Step(
                    "3.0",
                    "STG-ROLL signed off (PASS) for this head and release",
                    (Check("test_stg_roll_signed_off"),),
                    waivable=False,
                ),
                Step(
                    "3.1",
                    "Pilot tenant selection",
                    (Check("test_pilot_tenants_are_few_and_low_risk"),),
                    needs=("3.0",),
                ),
                Step(
                    "3.2",
                    "Pilot backfill, signature and enforce",
                    (
                        Check("test_pilot_backfill_clean"),
                        Check("test_enforcement_on_for_pilots_only"),
                    ),
                    needs=("3.0",),
                ),
                Step(
                    "3.3",
                    "OPS-02 decision matrix",
                    (Check("test_ops02_decision"),),
                    needs=("3.0",),
                ),
            ),
            suite="prd_pilot",
            # Staging's sign-off, then production: not one database.
            predecessor=Predecessor("stg-roll", Needs.PASS, same_database=False),
            rehearsal=Rehearsal.PILOT_STATE,
            read_only=True,
            decision_step="3.3",
        ),
        Phase(
            "prd-ga",
            "PRD-GA: gradual expansion on {target}",
            frozenset({EPHEMERAL, PRODUCTION}),
            (
                Step(
                    "4.0",
                    "PRD-PILOT signed off (GO) for this head and release",
                    (Check("test_pilot_decided_go"),),
                    waivable=False,
                ),
                Step(
                    "4.1",
                    "Rollout widened tenant by tenant; every enabled tenant clean",
                    (
                        Check("test_enforced_tenants_are_the_declared_waves"),
                        Check("test_every_enabled_tenant_is_clean"),
                    ),
                    needs=("4.0",),
                ),
                Step(
                    "4.2",
                    "Rollback procedure ready (OPS-02)",
                    (
                        Check("test_rollback_plan_ready"),
                        Check("test_release_downgrades_rehearsed"),
                    ),
                    needs=("4.0",),
                ),
                Step(
                    "4.3",
                    "Enforce in general use; decision signals clean",
                    (
                        Check("test_enforcement_in_general_use"),
                        Check("test_signals_clean_for_the_latest_wave"),
                    ),
                    needs=("4.0",),
                ),
            ),
            suite="prd_ga",
            predecessor=Predecessor("prd-pilot", Needs.GO, same_database=True),
            rehearsal=Rehearsal.GA_STATE,
            read_only=True,
        ),
    )
}
