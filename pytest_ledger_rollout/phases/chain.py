"""The phase chain: a phase runs on the strength of its predecessor's sign-off.

stg-roll needs a PASS of stg-mig, prd-pilot a PASS of stg-roll, prd-ga a GO of prd-pilot, each
for the same migration head and release, and (where both phases run on one target) on the same
database. The predecessor is the newest ``<phase>-*.json`` in the sign-off folder (or a path
given), trusted only when the ``.sha256`` beside it still matches, its JSON has the sign-off
schema with every step of the phase passed, and, with ``[signoff] allowed_signers``, its
``.sig`` verifies: a digest proves the file is unchanged, only a signature proves who wrote it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ledger_rollout.phases.model import PHASES
from pytest_ledger_rollout.phases.signoff import PASS, SCHEMA_VERSION, sha256_file, write_new
from pytest_ledger_rollout.phases.waivers import WAIVED
from pytest_ledger_rollout.results import CheckResult, Evidence, Failure, failed, passed

GO = "GO"
SIGNATURE_NAMESPACE = "pytest-ledger-rollout"  # ssh-keygen -Y's namespace for sign-offs
_SIGN_TIMEOUT_S = 30
MAX_SIGNOFF_BYTES = 64 << 20  # a sign-off with all its evidence is a few MB; read no more


@dataclass(frozen=True)
class Link:
    predecessor: str
    field: str  # the sign-off JSON's field that must read ``value``
    value: str
    same_database: bool  # both phases run on one target: the predecessor's must be this one


CHAIN: dict[str, Link] = {
    "stg-roll": Link("stg-mig", "verdict", PASS, same_database=True),
    "prd-pilot": Link("stg-roll", "verdict", PASS, same_database=False),  # staging, then prod
    "prd-ga": Link("prd-pilot", "decision", GO, same_database=True),
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


def sign_signoff(json_path: Path, key_path: Path) -> Path:
    """``<json>.sig`` beside the sign-off, from ``ssh-keygen -Y sign`` with an SSH private key
    (as release engineers sign git tags); written like every report, never over a file."""
    signature = _ssh_keygen(
        ["-Y", "sign", "-f", str(key_path), "-n", SIGNATURE_NAMESPACE], json_path.read_bytes()
    )
    if signature.returncode != 0:
        raise SigningError(
            f"ssh-keygen could not sign {json_path.name} with {key_path}: "
            f"{_first_line(signature.stderr)}; check [signoff] signing_key (a readable private key "
            "without a passphrase prompt, or one loaded in ssh-agent)"
        )
    sig_path = json_path.with_name(json_path.name + ".sig")
    write_new(sig_path, signature.stdout)
    return sig_path


class SigningError(RuntimeError):
    """A sign-off could not be signed; the message names the cause and the fix."""


def verify_signature(path: Path, allowed_signers: Path) -> str | Refusal:
    """The principal whose key in ``allowed_signers`` signed ``path`` (its ``.sig``), or why
    none did."""
    sig = path.with_name(path.name + ".sig")
    remedy = (
        "Use the sign-off as its phase wrote and signed it, with a key listed in "
        f"{allowed_signers}; rerun the predecessor phase with [signoff] signing_key set."
    )
    if not sig.is_file():
        return Refusal(f"unsigned: no {sig.name} beside it", remedy)
    found = _ssh_keygen(["-Y", "find-principals", "-f", str(allowed_signers), "-s", str(sig)], b"")
    principals = found.stdout.decode(errors="replace").split()
    if found.returncode != 0 or not principals:
        return Refusal(f"{sig.name} is not from a key in {allowed_signers.name}", remedy)
    data = path.read_bytes()
    for principal in principals:
        verified = _ssh_keygen(
            ["-Y", "verify", "-f", str(allowed_signers), "-I", principal,
             "-n", SIGNATURE_NAMESPACE, "-s", str(sig)],
            data,
        )  # fmt: skip
        if verified.returncode == 0:
            return principal
    return Refusal(f"{sig.name} does not verify: the file changed after it was signed", remedy)


def _ssh_keygen(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["ssh-keygen", *args],
            input=stdin,
            capture_output=True,
            timeout=_SIGN_TIMEOUT_S,
            check=False,
            start_new_session=True,  # no terminal: a passphrase prompt fails at once, not hangs
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SigningError(
            f"ssh-keygen could not run ({exc}): install openssh-client (ssh-keygen 8.2 or "
            "later), or remove [signoff] from the rollout config"
        ) from None


def _first_line(output: bytes) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else "no message"


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
    signer = "not required (no [signoff] allowed_signers)"
    if allowed_signers is not None:
        verified = verify_signature(path, allowed_signers)
        if isinstance(verified, Refusal):
            return _refused(link, wanted, str(path), [verified], evidence)
        signer = f"{verified} (verified against {allowed_signers})"
    evidence.append(Evidence("signature", signer))
    signoff = _load(path)
    if isinstance(signoff, Refusal):
        return _refused(link, wanted, str(path), [signoff], evidence)
    compare_db = link.same_database and not (rehearsal and signoff.get("rehearsal") is True)
    evidence.append(
        Evidence(
            "compared",
            "\n".join(
                f"{label}: {seen!r} (needed {need!r})"
                for label, seen, need in (
                    ("schema_version", signoff.get("schema_version"), SCHEMA_VERSION),
                    ("phase", signoff.get("phase"), link.predecessor),
                    (link.field, signoff.get(link.field), link.value),
                    ("rehearsal", signoff.get("rehearsal"), "either" if rehearsal else False),
                    ("head", signoff.get("head"), head),
                    ("release", signoff.get("release"), release),
                    ("identity", signoff.get("identity"), identity if compare_db else "any"),
                )
            ),
        )
    )
    refusals = _schema(signoff) or _judge(link, signoff, head, release, rehearsal)
    if not refusals and compare_db:
        refusals = _same_database(signoff.get("identity"), identity, link)
    if refusals:
        return _refused(link, wanted, str(path), refusals, evidence)
    digest = sha256_file(path)[:12]
    signed = f", signed by {signer.split(' (', 1)[0]}" if allowed_signers is not None else ""
    return passed(
        f"{link.predecessor} {link.value}: {path.name} (sha256 {digest}, head {head}, "
        f"release {release}{signed})",
        *evidence,
        **{f"{link.predecessor} sign-off": f"{path.name} sha256:{digest}{signed}"},
    )


def _load(path: Path) -> dict[str, Any] | Refusal:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SIGNOFF_BYTES + 1)
        if len(raw) > MAX_SIGNOFF_BYTES:
            raise ValueError(f"larger than {MAX_SIGNOFF_BYTES} bytes")
        document = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        document = f"{type(exc).__name__}: {exc}"
    if isinstance(document, dict):
        return document
    return Refusal(f"not a sign-off JSON object ({document!r:.80})", "Give the sign-off JSON.")


_FORGED = "Use the sign-off JSON its phase wrote (this plugin, schema version 2), unedited."
_TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "plugin_version": (str,),
    "phase": (str,),
    "target": (str,),
    "target_kind": (str,),
    "rehearsal": (bool,),
    "verdict": (str,),
    "steps": (list,),
    "environment": (dict,),
}


def _schema(signoff: dict[str, Any]) -> list[Refusal]:
    """The sign-off's shape; then every step of its phase present, and passed or waived with
    checks that ran (a step waived without running proves nothing)."""
    if signoff.get("schema_version") != SCHEMA_VERSION:
        return [
            Refusal(
                f"schema_version {signoff.get('schema_version')!r}, not {SCHEMA_VERSION}",
                _FORGED,
            )
        ]
    wrong = [
        key
        for key, types in _TOP_LEVEL.items()
        if not isinstance(signoff.get(key), types) or signoff.get(key) in ("", None)
    ]
    if wrong:
        return [Refusal(f"missing or malformed: {', '.join(wrong)}", _FORGED)]
    phase = PHASES.get(signoff["phase"])
    if phase is None:
        return [Refusal(f"unknown phase {signoff['phase']!r}", _FORGED)]
    steps = {s["id"]: s for s in signoff["steps"] if isinstance(s, dict) and _text(s.get("id"))}
    problems = []
    for step in phase.steps:
        recorded = steps.get(step.id)
        if recorded is None:
            problems.append(f"step {step.id} missing")
        elif not _step_held(recorded):
            problems.append(f"step {step.id} {recorded.get('outcome')!s:.40}")
    if problems:
        return [
            Refusal(
                "not every step passed: " + "; ".join(problems),
                f"Run `pytest --phase={phase.name}` until every step passes (a step waived "
                "without running its checks does not count).",
            )
        ]
    return []


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _step_held(step: dict[str, Any]) -> bool:
    checks = step.get("checks")
    recorded = checks if isinstance(checks, list) else []
    outcomes = [c["outcome"] for c in recorded if isinstance(c, dict) and _text(c.get("outcome"))]
    if step.get("outcome") == "passed":
        return "passed" in outcomes and not {"failed", "error"} & set(outcomes)
    if step.get("outcome") == WAIVED:  # its checks ran; an assertion failure was waived
        return "failed" in outcomes and "error" not in outcomes
    return False


def _same_database(theirs: Any, ours: Mapping[str, Any] | None, link: Link) -> list[Refusal]:
    """Same cluster (system identifier) and database where both are known, else same database,
    server address and port."""
    remedy = (
        f"Run {link.predecessor} on this target's database, or point this run at the database "
        "the sign-off is for."
    )
    if ours is None:
        return [Refusal("this run's database identity is unknown: nothing to compare", remedy)]
    if not isinstance(theirs, dict) or not theirs.get("database"):
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
    link: Link,
    signoff: dict[str, Any],
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
    if signoff.get("head") != head:
        refusals.append(
            Refusal(f"migration head {signoff.get('head') or '(missing)'}, not {head}", rerun)
        )
    if not release or signoff.get("release") != release:
        refusals.append(
            Refusal(
                f"release {signoff.get('release') or '(missing)'}, "
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
