"""pytest hooks loaded by every pytest run where the package is installed: the options and
the ``dod`` marker. A phase run's hooks and fixtures (and SQLAlchemy, Alembic, testcontainers
with them) load only when a phase is given, so other suites do not pay for them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_ledger_rollout.phases.model import PHASES, TEAM_ROLES
from pytest_ledger_rollout.plugin.options import DOD_MARKER, OPTIONS, option, rollout_config_path
from pytest_ledger_rollout.targets.kinds import EPHEMERAL

if TYPE_CHECKING:
    from pytest_ledger_rollout.targets.postgres import EarlyServer


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
    early = _early_server(config, phase_name)
    try:
        from pytest_ledger_rollout.plugin import (
            phase_run,  # here, not at the top: see the module docstring
        )

        config.pluginmanager.register(phase_run, "ledger_rollout.phase_run")
        phase_run.configure(config, phase_name, early)
    except BaseException:
        if early is not None:
            early.stop()
        raise


def _early_server(config: pytest.Config, phase_name: str) -> EarlyServer | None:
    """The ephemeral target's throwaway Postgres, starting now: its start waits on initdb and
    pg_ctl (or a container), so it overlaps the phase run's imports and configuration. None
    where the run may not start one; the phase run then decides, and reports any usage error,
    as it would without this."""
    phase = PHASES.get(phase_name)
    if phase is None or EPHEMERAL not in phase.allowed_kinds or config.option.collectonly:
        return None
    from pytest_ledger_rollout.config import load_config
    from pytest_ledger_rollout.targets.postgres import EarlyServer

    try:
        rollout = load_config(rollout_config_path(config))
    except Exception:  # reported by the phase run's own configuration
        return None
    name, _ = option(config, "rollout_target")
    target = rollout.targets.get(name or rollout.default_target() or "")
    if target is None or target.kind != EPHEMERAL or target.ephemeral is None:
        return None
    # Only the local provider, with its modules imported here first: the thread must import
    # nothing while this one imports the phase run (two threads importing overlapping modules,
    # psycopg's say, can meet half-initialized ones). The container provider's probe imports
    # docker and requests on use: it starts with the phase run, as before.
    if target.ephemeral.provider != "local":
        return None
    # what start_ephemeral imports
    from pytest_ledger_rollout.targets.postgres import containers, local  # noqa: F401

    return EarlyServer.start(target.ephemeral)
