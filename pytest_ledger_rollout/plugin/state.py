"""Per-run state kept in ``config.stash``."""

from __future__ import annotations

from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_ledger_rollout.config import RolloutConfig
from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.phases.model import Check, Phase, Role, Step
from pytest_ledger_rollout.phases.opened_target import OpenedTarget
from pytest_ledger_rollout.phases.signoff import RunRecord, SignoffPaths
from pytest_ledger_rollout.results import Evidence
from pytest_ledger_rollout.targets.declared import ResolvedTarget
from pytest_ledger_rollout.targets.postgres import EphemeralServer


@dataclass(frozen=True)
class PlannedCheck:
    """Where a collected test stands in the phase's step model."""

    step: Step
    role: Role
    check: Check | None  # the packaged check it is; None for a team's own dod(...) check

    @property
    def needs(self) -> tuple[str, ...]:
        return self.check.needs if self.check else ()


@dataclass
class RunState:
    config: RolloutConfig
    phase: Phase
    target: ResolvedTarget
    record: RunRecord
    scrubber: Scrubber
    paths: SignoffPaths
    stack: ExitStack = field(default_factory=ExitStack)
    ephemeral_start: Future[EphemeralServer] | None = None  # started while pytest collects
    predecessor: Path | None = None  # an explicit predecessor sign-off (else the newest found)
    pilot_candidates: int = 0  # prd-pilot: how many ranked candidates to list (0: none)
    session: OpenedTarget | None = None
    # Where pytest-html writes the report before it is placed, never through a symlink.
    html_staging: Path | None = None
    signature: Path | None = None  # the sign-off's .sig, when [signoff] signing_key is set


RUN_STATE = pytest.StashKey[RunState]()
# Evidence a check recorded, kept on its test item until its report is built.
ITEM_EVIDENCE = pytest.StashKey[list[Evidence]]()
ITEM_SUMMARY = pytest.StashKey[str]()
ITEM_PLAN = pytest.StashKey[PlannedCheck]()
# Why the step model's gate held a check back (it is skipped with this as its reason).
ITEM_HELD_BACK = pytest.StashKey[str]()
