"""The phase chain: a phase runs on the strength of its predecessor's sign-off.

Each phase's ``predecessor`` (the step model, ``phases/model.py``) says whose sign-off it needs
and what that sign-off must read: stg-roll a PASS of stg-mig, prd-pilot a PASS of stg-roll,
prd-ga a GO of prd-pilot, each for the same migration head and release, and (where both phases
run on one target) on the same database. The predecessor is the newest sign-off of that phase in
the sign-off folder (or a path given), trusted only when the ``.sha256`` beside it still
matches, ``signoff.read_signoff`` reads it as this plugin's schema with every step of the phase
passed, and, with ``[signoff] allowed_signers``, its ``.sig`` verifies: a digest proves the file
is unchanged, only a signature proves who wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ledger_rollout.phases.model import PHASES, Needs, Predecessor
from pytest_ledger_rollout.phases.signoff import (
    SCHEMA_VERSION,
    SignedStep,
    Signoff,
    UnreadableSignoff,
    Verdict,
    read_signoff,
    sha256_file,
    signoffs_of,
    verify_checksums,
    verify_signature,
)
from pytest_ledger_rollout.phases.waivers import WAIVED
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed


@dataclass(frozen=True)
class Refusal:
    why: str
    remedy: str


def check_predecessor(
    phase: str,
    *,
    signoff_dir: Path,
    head: str,
    release: str | None,
    rehearsal: bool,
    identity: Mapping[str, Any] | None,
    path: Path | None = None,
    allowed_signers: Path | None = None,
) -> CheckResult:
    """The predecessor sign-off ``phase`` needs: found, intact, signed where signing is
    configured, of the sign-off schema, every step passed, for the same head, release and
    (where both phases run on one target) database, and not a rehearsal unless this run is one
    too.

    ``path`` overrides the search of ``signoff_dir``; ``rehearsal`` is this run's (an ephemeral
    target); ``release`` is the release this run signs off; ``identity`` is this run's proven
    database (``ServerIdentity.as_json()``), None when unknown (then a same-database link is
    refused); ``allowed_signers`` (an ssh-keygen allowed-signers file) requires a valid
    ``.sig``."""
    link = PHASES[phase].predecessor
    if link is None:
        raise ValueError(f"phase {phase} has no predecessor: it starts the chain")
    wanted = (
        f"the newest {link.phase} sign-off with {link.needs}, "
        f"head {head}, release {release or '(not given)'}, its sha256 intact"
        + ("" if rehearsal else ", not a rehearsal")
    )
    if path is None:
        candidates = signoffs_of(signoff_dir, link.phase)
        path = candidates[-1] if candidates else None
        looked = f"{signoff_dir}/{link.phase}-*-<UTC>.json"
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
                    f"Run `pytest --phase={link.phase}` to a {link.needs} for this release "
                    "first, or give the path of its sign-off JSON.",
                )
            ],
            evidence,
        )
    tampered = verify_checksums(path)
    if tampered is not None:
        refusal = Refusal(tampered.why, tampered.remedy)
        return _refused(link, wanted, str(path), [refusal], evidence)
    signer = "not required (no [signoff] allowed_signers)"
    if allowed_signers is not None:
        verified = verify_signature(path, allowed_signers)
        if isinstance(verified, UnreadableSignoff):
            refusal = Refusal(verified.why, verified.remedy)
            return _refused(link, wanted, str(path), [refusal], evidence)
        signer = f"{verified} (verified against {allowed_signers})"
    evidence.append(Evidence("signature", signer))
    try:
        signoff = read_signoff(path)
    except UnreadableSignoff as unreadable:
        refusal = Refusal(unreadable.why, unreadable.remedy)
        return _refused(link, wanted, str(path), [refusal], evidence)
    compare_db = link.same_database and not (rehearsal and signoff.rehearsal)
    evidence.append(
        Evidence(
            "compared",
            "\n".join(
                f"{label}: {seen!r} (needed {need!r})"
                for label, seen, need in (
                    ("schema_version", SCHEMA_VERSION, SCHEMA_VERSION),
                    ("phase", signoff.phase, link.phase),
                    ("verdict", str(signoff.verdict), str(Verdict.PASS)),
                    *([("decision", _shown(signoff), "GO")] if link.needs is Needs.GO else []),
                    ("rehearsal", signoff.rehearsal, "either" if rehearsal else False),
                    ("head", signoff.head, head),
                    ("release", signoff.release, release),
                    ("identity", signoff.identity, identity if compare_db else "any"),
                )
            ),
        )
    )
    refusals = _steps(signoff) or _judge(link, signoff, head, release, rehearsal)
    if not refusals and compare_db:
        refusals = _same_database(signoff.identity, identity, link)
    if refusals:
        return _refused(link, wanted, str(path), refusals, evidence)
    digest = sha256_file(path)[:12]
    signed = f", signed by {signer.split(' (', 1)[0]}" if allowed_signers is not None else ""
    standing = _shown(signoff) if link.needs is Needs.GO else str(signoff.verdict)
    return passed(
        f"{link.phase} {standing}: {path.name} (sha256 {digest}, head {head}, "
        f"release {release}{signed})",
        *evidence,
        **{f"{link.phase} sign-off": f"{path.name} sha256:{digest}{signed}"},
    )


def _shown(signoff: Signoff) -> str:
    return str(signoff.decision) if signoff.decision is not None else "(missing)"


def _steps(signoff: Signoff) -> list[Refusal]:
    """Every step of its phase present, and passed or waived with checks that ran (a step
    waived without running proves nothing)."""
    phase = PHASES.get(signoff.phase)
    if phase is None:
        return [
            Refusal(
                f"unknown phase {signoff.phase!r}",
                f"Use the sign-off JSON its phase wrote (this plugin, schema version "
                f"{SCHEMA_VERSION}), unedited.",
            )
        ]
    problems = []
    for step in phase.steps:
        recorded = signoff.steps.get(step.id)
        if recorded is None:
            problems.append(f"step {step.id} missing")
        elif not _step_held(recorded):
            problems.append(f"step {step.id} {recorded.outcome or '(no outcome)'}"[:60])
    if problems:
        return [
            Refusal(
                "not every step passed: " + "; ".join(problems),
                f"Run `pytest --phase={phase.name}` until every step passes (a step waived "
                "without running its checks does not count).",
            )
        ]
    return []


def _step_held(step: SignedStep) -> bool:
    outcomes = set(step.check_outcomes)
    if step.outcome == "passed":
        return "passed" in outcomes and not {"failed", "error"} & outcomes
    if step.outcome == WAIVED:  # its checks ran; an assertion failure was waived
        return "failed" in outcomes and "error" not in outcomes
    return False


def _same_database(
    theirs: Mapping[str, Any] | None, ours: Mapping[str, Any] | None, link: Predecessor
) -> list[Refusal]:
    """Same cluster (system identifier) and database where both are known, else same database,
    server address and port."""
    remedy = (
        f"Run {link.phase} on this target's database, or point this run at the database "
        "the sign-off is for."
    )
    if ours is None:
        return [Refusal("this run's database identity is unknown: nothing to compare", remedy)]
    if theirs is None or not theirs.get("database"):
        return [Refusal("it records no database identity", remedy)]
    keys = ["database", "system_identifier"]
    if theirs.get("system_identifier") is None or ours.get("system_identifier") is None:
        keys = ["database", "server_addr", "server_port"]
    differ = [k for k in keys if theirs.get(k) != ours.get(k)]
    if differ:
        seen = ", ".join(f"{k} {theirs.get(k)!r} (this run: {ours.get(k)!r})" for k in differ)
        return [Refusal(f"another database: {seen}", remedy)]
    return []


def _judge(
    link: Predecessor,
    signoff: Signoff,
    head: str,
    release: str | None,
    rehearsal: bool,
) -> list[Refusal]:
    rerun = f"Run `pytest --phase={link.phase}` for this release and head, then rerun."
    resolve = (
        f"Resolve what the {link.phase} sign-off reports, then run it again to a {link.needs}."
    )
    refusals = []
    if signoff.phase != link.phase:
        refusals.append(Refusal(f"it is a {signoff.phase!r} sign-off", rerun))
    if signoff.verdict is not Verdict.PASS:
        refusals.append(Refusal(f"verdict is {signoff.verdict}, not {Verdict.PASS}", resolve))
    if link.needs is Needs.GO and not (signoff.decision is not None and signoff.decision.go):
        refusals.append(Refusal(f"decision is {_shown(signoff)}, not GO", resolve))
    if signoff.rehearsal and not rehearsal:
        refusals.append(
            Refusal(
                "it is a rehearsal (ephemeral target): a rehearsal never satisfies a real "
                "target's chain",
                f"Run {link.phase} on its real target, or give that sign-off's path.",
            )
        )
    if signoff.head != head:
        refusals.append(Refusal(f"migration head {signoff.head or '(missing)'}, not {head}", rerun))
    if not release or signoff.release != release:
        refusals.append(
            Refusal(
                f"release {signoff.release or '(missing)'}, "
                f"this run's release {release or '(not given)'}",
                rerun if release else "Give the release this run signs off.",
            )
        )
    return refusals


def _refused(
    link: Predecessor, wanted: str, looked: str, refusals: list[Refusal], evidence: list[Evidence]
) -> CheckResult:
    return failed(
        Failure(
            f"No valid {link.phase} sign-off: " + "; ".join(r.why for r in refusals),
            expected=wanted,
            seen=f"{looked}: refused because\n" + "\n".join(f"- {r.why}" for r in refusals),
            remedy="\n".join(dict.fromkeys(r.remedy for r in refusals)),
        ),
        *evidence,
    )
