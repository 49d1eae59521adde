"""The phase chain: a phase runs on the strength of its predecessor's sign-off.

stg-roll needs a PASS of stg-mig, prd-pilot a PASS of stg-roll, prd-ga a GO of prd-pilot, each
for the same migration head and release. The predecessor is the newest ``<phase>-*.json`` in the
sign-off folder (or a path given), trusted only when the ``.sha256`` beside it still matches.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .evidence import PASS, sha256_file
from .results import CheckResult, Evidence, Failure, failed, passed

HEAD_KEY, RELEASE_KEY = "alembic head (expected)", "release"  # keys of the JSON's environment
GO = "GO"


@dataclass(frozen=True)
class Link:
    predecessor: str
    field: str  # the sign-off JSON's field that must read ``value``
    value: str


CHAIN: dict[str, Link] = {
    "stg-roll": Link("stg-mig", "verdict", PASS),
    "prd-pilot": Link("stg-roll", "verdict", PASS),
    "prd-ga": Link("prd-pilot", "decision", GO),
}

# plugin.py names sign-offs <phase>-<target>-<UTC %Y%m%dT%H%M%SZ>.<suffix>.
_STAMP = re.compile(r"-(\d{8}T\d{6}Z)\.json$")


@dataclass(frozen=True)
class Refusal:
    why: str
    remedy: str


def newest_signoff(folder: Path, phase: str) -> tuple[Path | None, list[Path]]:
    """The newest sign-off JSON of ``phase`` by the UTC time in its name, and all candidates."""
    candidates = sorted(
        (p for p in folder.glob(f"{phase}-*.json") if _STAMP.search(p.name)),
        key=lambda p: (_stamp(p), p.name),
    )
    return (candidates[-1] if candidates else None), candidates


def _stamp(path: Path) -> str:
    match = _STAMP.search(path.name)
    assert match is not None
    return match.group(1)


def verify_checksum(path: Path) -> Refusal | None:
    """``sha256sum -c`` of the ``.sha256`` beside ``path``, which must list ``path``."""
    sums = path.with_suffix(".sha256")
    rerun = "Rerun the phase for a fresh sign-off, or use the original from the release ticket."
    if not sums.is_file():
        return Refusal(f"no checksum file {sums.name} beside it", rerun)
    listed: dict[str, str] = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip())
        if match:
            listed[match.group(2)] = match.group(1).lower()
    if path.name not in listed:
        return Refusal(f"{sums.name} does not list {path.name}", rerun)
    altered = [
        name
        for name, digest in listed.items()
        if not (path.parent / name).is_file() or sha256_file(path.parent / name) != digest
    ]
    if altered:
        return Refusal(
            f"sha256 mismatch (changed or missing since signed): {', '.join(altered)}",
            f"The sign-off was altered after it was written and cannot be trusted. {rerun}",
        )
    return None


def check_predecessor(
    phase: str,
    *,
    signoff_dir: Path,
    head: str,
    release: str | None,
    rehearsal: bool,
    path: Path | None = None,
) -> CheckResult:
    """The predecessor sign-off ``phase`` needs: found, intact, successful, for the same head
    and release, and not a rehearsal unless this run is one too.

    ``path`` overrides the search of ``signoff_dir``; ``rehearsal`` is this run's (an ephemeral
    target); ``release`` is the release this run signs off, compared to the sign-off's
    ``environment["release"]``."""
    link = CHAIN[phase]
    wanted = (
        f"the newest {link.predecessor} sign-off with {link.field} {link.value}, "
        f"head {head}, release {release or '(not given)'}, its sha256 intact"
        + ("" if rehearsal else ", not a rehearsal")
    )
    if path is None:
        path, candidates = newest_signoff(signoff_dir, link.predecessor)
        looked = f"{signoff_dir}/{link.predecessor}-*-<UTC>.json"
        found = f"{len(candidates)} candidates" + (
            f", newest {path.name}" if path is not None else ""
        )
    else:
        looked, found = str(path), "given explicitly"
    evidence = [Evidence("predecessor sign-off", f"looked for {looked}: {found}")]
    if path is None or not path.is_file():
        return _refused(
            link,
            wanted,
            looked,
            [
                Refusal(
                    "not found",
                    f"Run `pytest --phase={link.predecessor}` to a {link.value} for this release "
                    "first, or give the path of its sign-off JSON.",
                )
            ],
            evidence,
        )
    tampered = verify_checksum(path)
    if tampered is not None:
        return _refused(link, wanted, str(path), [tampered], evidence)
    signoff = _load(path)
    if isinstance(signoff, Refusal):
        return _refused(link, wanted, str(path), [signoff], evidence)
    environment = signoff.get("environment")
    if not isinstance(environment, dict):
        environment = {}
    evidence.append(
        Evidence(
            "compared",
            "\n".join(
                f"{label}: {seen!r} (needed {need!r})"
                for label, seen, need in (
                    ("phase", signoff.get("phase"), link.predecessor),
                    (link.field, signoff.get(link.field), link.value),
                    ("rehearsal", signoff.get("rehearsal"), "either" if rehearsal else False),
                    ("head", environment.get(HEAD_KEY), head),
                    ("release", environment.get(RELEASE_KEY), release),
                )
            ),
        )
    )
    refusals = _judge(link, signoff, environment, head, release, rehearsal)
    if refusals:
        return _refused(link, wanted, str(path), refusals, evidence)
    digest = sha256_file(path)[:12]
    return passed(
        f"{link.predecessor} {link.value}: {path.name} (sha256 {digest}, head {head}, "
        f"release {release})",
        *evidence,
        **{f"{link.predecessor} sign-off": f"{path.name} sha256:{digest}"},
    )


def _load(path: Path) -> dict[str, Any] | Refusal:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        document = f"{type(exc).__name__}: {exc}"
    if isinstance(document, dict):
        return document
    return Refusal(f"not a sign-off JSON object ({document!r:.80})", "Give the sign-off JSON.")


def _judge(
    link: Link,
    signoff: dict[str, Any],
    environment: dict[str, Any],
    head: str,
    release: str | None,
    rehearsal: bool,
) -> list[Refusal]:
    rerun = f"Run `pytest --phase={link.predecessor}` for this release and head, then rerun."
    refusals = []
    if signoff.get("phase") != link.predecessor:
        refusals.append(Refusal(f"it is a {signoff.get('phase')!r} sign-off", rerun))
    if signoff.get(link.field) != link.value:
        refusals.append(
            Refusal(
                f"{link.field} is {signoff.get(link.field) or '(missing)'}, not {link.value}",
                f"Resolve what the {link.predecessor} sign-off reports, then run it again to "
                f"a {link.value}.",
            )
        )
    if signoff.get("rehearsal") is not False and not rehearsal:
        refusals.append(
            Refusal(
                "it is a rehearsal (ephemeral target): a rehearsal never satisfies a real "
                "target's chain",
                f"Run {link.predecessor} on its real target, or give that sign-off's path.",
            )
        )
    if environment.get(HEAD_KEY) != head:
        refusals.append(
            Refusal(f"migration head {environment.get(HEAD_KEY) or '(missing)'}, not {head}", rerun)
        )
    if not release or environment.get(RELEASE_KEY) != release:
        refusals.append(
            Refusal(
                f"release {environment.get(RELEASE_KEY) or '(missing)'}, "
                f"this run's release {release or '(not given)'}",
                rerun if release else "Give the release this run signs off.",
            )
        )
    return refusals


def _refused(
    link: Link, wanted: str, looked: str, refusals: list[Refusal], evidence: list[Evidence]
) -> CheckResult:
    return failed(
        Failure(
            f"No valid {link.predecessor} sign-off: " + "; ".join(r.why for r in refusals),
            expected=wanted,
            seen=f"{looked}: refused because\n" + "\n".join(f"- {r.why}" for r in refusals),
            remedy="\n".join(dict.fromkeys(r.remedy for r in refusals)),
        ),
        *evidence,
    )
