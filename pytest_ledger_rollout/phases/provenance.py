"""Where a sign-off's inputs came from: the git commit and dirty state of the repository that
holds the migrations, and of the one that holds the config (when they are git checkouts)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT = 10  # seconds; a hung git must not hold the run


@dataclass(frozen=True)
class RepositoryState:
    root: str
    commit: str
    dirty: bool  # tracked files changed since the commit

    def describe(self) -> str:
        return f"{self.root} @ {self.commit[:12]}" + (
            " (uncommitted changes)" if self.dirty else ""
        )

    def as_json(self) -> dict[str, str | bool]:
        return {"root": self.root, "commit": self.commit, "dirty": self.dirty}


def repository_state(folder: Path) -> RepositoryState | None:
    """The checkout ``folder`` is in, or None where it is not one (or git is missing)."""
    try:
        head = _git(folder, "rev-parse", "--show-toplevel", "HEAD").splitlines()
        status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if len(head) != 2:
        return None
    return RepositoryState(head[0], head[1], bool(status.strip()))


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=GIT_TIMEOUT,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "GIT_TERMINAL_PROMPT": "0"},
    ).stdout
