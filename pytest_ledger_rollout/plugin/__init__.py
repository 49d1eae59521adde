"""pytest hooks loaded by every pytest run where the package is installed: the options and
the ``dod`` marker. A phase run's hooks and fixtures (and SQLAlchemy, Alembic, testcontainers
with them) load only when a phase is given, so other suites do not pay for them."""

from __future__ import annotations

import pytest

from pytest_ledger_rollout.phases.model import TEAM_ROLES
from pytest_ledger_rollout.plugin.options import DOD_MARKER, OPTIONS, option


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ledger-rollout", "ledger rollout definition-of-done gates")
    for name, ini, default, help_text in OPTIONS:
        group.addoption(
            f"--{name}",
            dest=ini,
            default=None,
            metavar=name.split("-")[-1].upper(),
            help=f"{help_text} (ini: {ini}; default: {default})",
        )
        parser.addini(ini, help_text, default=None)


@pytest.hookimpl(tryfirst=True)  # the phase run is configured before pytest-html reads --html
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{DOD_MARKER}(step_id, role='verification'): the runbook step a definition-of-done "
        f"check belongs to; a team's own check takes the role {', '.join(TEAM_ROLES)}",
    )
    phase_name, _ = option(config, "rollout_phase")
    if phase_name is None:
        return
    from pytest_ledger_rollout.plugin import (
        phase_run,  # here, not at the top: see the module docstring
    )

    config.pluginmanager.register(phase_run, "ledger_rollout.phase_run")
    phase_run.configure(config, phase_name)
