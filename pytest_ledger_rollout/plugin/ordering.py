"""The order of a phase's checks, from the step model only: each item's place (step, role,
packaged check) and the sort by it, whatever order other plugins left."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ledger_rollout.phases.model import (
    ROLE_ORDER,
    TEAM_ROLES,
    Phase,
    Role,
)
from pytest_ledger_rollout.plugin.options import DOD_MARKER
from pytest_ledger_rollout.plugin.state import (
    ITEM_PLAN,
    PlannedCheck,
)


def plan_check(item: pytest.Item, phase: Phase, suite: Path) -> PlannedCheck:
    """The item's place in the step model: a packaged check by its function in the phase's
    own suite package, anything else a team's check in the step its marker names."""
    marker = item.get_closest_marker(DOD_MARKER)
    assert marker is not None
    step_id = str(marker.args[0]) if marker.args else ""
    function = getattr(item, "originalname", item.name)
    packaged = phase.packaged(function) if item.path.resolve().is_relative_to(suite) else None
    if packaged is not None:
        step, check = packaged
        if step.id != step_id:
            raise pytest.UsageError(
                f"{item.nodeid} is marked dod({step_id!r}) but the step model of "
                f"{phase.name} has it in step {step.id}"
            )
        return PlannedCheck(step, check.role, check)
    marked = phase.step(step_id)
    if marked is None:
        raise pytest.UsageError(
            f"{item.nodeid} is marked dod({step_id!r}), which is not a step of "
            f"{phase.name} ({', '.join(s.id for s in phase.steps)})"
        )
    role = str(marker.kwargs.get("role", Role.VERIFICATION))
    if role not in TEAM_ROLES:
        raise pytest.UsageError(
            f"{item.nodeid} is marked dod({step_id!r}, role={role!r}): a team's own check "
            f"takes the role {', '.join(TEAM_ROLES)} (actions belong to the packaged suites)"
        )
    return PlannedCheck(marked, Role(role), None)


def in_model_order(items: list[pytest.Item], phase: Phase) -> list[pytest.Item]:
    """Step by step; within a step probes, pre-flights, actions, verifications; packaged
    checks in their declared order before a team's; whatever order other plugins left."""
    steps = {step.id: index for index, step in enumerate(phase.steps)}

    def position(item: pytest.Item) -> tuple[int, int, int]:
        plan = item.stash[ITEM_PLAN]
        declared = plan.step.checks.index(plan.check) if plan.check else len(plan.step.checks)
        return steps[plan.step.id], ROLE_ORDER[plan.role], declared

    return sorted(items, key=position)
