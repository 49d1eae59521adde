"""The plugin's options (each with an ini twin) and the ``dod`` marker's name.

Light on purpose: the hook module every pytest run loads imports this, not the rest of the
package."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ledger_rollout.phases.model import PHASES

DOD_MARKER = "dod"

# (option, ini twin, default, help)
OPTIONS = (
    ("phase", "rollout_phase", None, f"rollout phase to decide: {', '.join(PHASES)}"),
    (
        "target",
        "rollout_target",
        None,
        "target name from the rollout config (default: the ephemeral one)",
    ),
    ("rollout-config", "rollout_config", "rollout.toml", "rollout config file"),
    (
        "signoff-dir",
        "rollout_signoff_dir",
        "reports",
        "folder for the sign-off HTML, JSON and sha256",
    ),
    (
        "waivers",
        "rollout_waivers",
        None,
        "waiver file (YAML): step id -> justification, expiration_date, approver, run",
    ),
    (
        "release",
        "rollout_release",
        None,
        "the release (RC) this run signs off; the phase chain compares it "
        "(ephemeral targets: 'rehearsal')",
    ),
    (
        "predecessor",
        "rollout_predecessor",
        None,
        "the predecessor phase's sign-off JSON (default: the newest in the sign-off folder)",
    ),
    (
        "pilot-candidates",
        "rollout_pilot_candidates",
        None,
        "prd-pilot: also list this many lowest-risk tenants, ranked with their figures",
    ),
)

_DEFAULTS = {ini: default for _, ini, default, _ in OPTIONS}


def option(config: pytest.Config, ini: str) -> tuple[str | None, Path]:
    """Command line beats ini beats default; paths are relative to where each was given (a
    default to where pytest was invoked: pytest may take an option's value for its rootdir)."""
    value = config.getoption(ini)
    if value is not None:
        return str(value), config.invocation_params.dir
    value = config.getini(ini)
    if value:
        return str(value), config.inipath.parent if config.inipath else config.rootpath
    return _DEFAULTS[ini], config.invocation_params.dir


def rollout_config_path(config: pytest.Config) -> Path:
    """The rollout config: as given, else the default name where pytest was invoked, then in
    its rootdir; missing, the error lists every place looked at."""
    value, base = option(config, "rollout_config")
    assert value is not None
    if config.getoption("rollout_config") or config.getini("rollout_config"):
        return (base / value).resolve()
    places = list(dict.fromkeys((base / value, config.rootpath / value)))
    found = next((place for place in places if place.is_file()), None)
    if found is None:
        raise pytest.UsageError(
            f"no rollout config: looked for {' and '.join(str(p) for p in places)}; "
            "run from the folder that holds it or pass --rollout-config=PATH"
        )
    return found.resolve()
