"""Sign-offs, written and read in this one module: the run record (what each check saw, per
runbook step, the typed verdict and the pilot's typed decision), the file names, the
schema-versioned JSON, its checksums and SSH signature (``ssh-keygen -Y``), and the typed
reader the phase chain trusts a predecessor through.

Display strings (the verdict line, the environment table) are written for people and are
never read back: the reader takes the JSON's typed fields only."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_ledger_rollout import __version__
from pytest_ledger_rollout.checks.metrics.decision import Verdict as Ops02Verdict
from pytest_ledger_rollout.checks.tenant_decision import Ops02Decision
from pytest_ledger_rollout.masking import Scrubber
from pytest_ledger_rollout.phases.model import Check, Phase, Role, Step
from pytest_ledger_rollout.phases.provenance import RepositoryState
from pytest_ledger_rollout.phases.waivers import WAIVED, Waiver, waived_outcome
from pytest_ledger_rollout.results import Evidence, Failure


class Verdict(enum.StrEnum):
    """A phase run's verdict."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCOMPLETE = "INCOMPLETE"  # a required check did not run
    INTERRUPTED = "INTERRUPTED"  # Ctrl-C or an internal error before the last check


PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
NOT_ATTEMPTED = "not attempted"  # how a check the step model held back says why
# Of the sign-off JSON. 3: ``decision`` is ``{"verdict": "GO"|"HOLD"|"ROLLBACK", "dry_run":
# bool}`` or null (2 held a display string such as "DRY RUN (would decide HOLD)").
SCHEMA_VERSION = 3
DECISION_SHOWN = "OPS-02 decision"  # the environment table's row (for people only)


@dataclass
class CheckRecord:
    """One suite test's outcome (a step may have several)."""

    name: str
    step_id: str
    outcome: str  # passed | failed | error | skipped
    summary: str
    evidence: list[Evidence] = field(default_factory=list)
    message: str = ""
    role: Role = Role.PROBE
    check: str | None = None  # the packaged check it is (its function name); None: a team's own
    failure: Failure | None = None  # what a failed check found, in the runbook's terms


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    outcome: str  # passed | failed | not run | waived | waived (not run)
    evidence: str  # one line for the checklist
    checks: tuple[CheckRecord, ...]
    waiver: Waiver | None = None  # the step's waiver on file, active or expired


def _packaged(step: Step, record: CheckRecord) -> Check:
    """The packaged check a record is; a team's own check holds back and is waivable."""
    found = step.check(record.check) if record.check is not None else None
    return found or Check(record.name)


@dataclass
class RunRecord:
    phase: Phase
    target: str
    target_kind: str
    scrubber: Scrubber
    environment: dict[str, str] = field(default_factory=dict)
    checks: list[CheckRecord] = field(default_factory=list)
    aborted: str | None = None  # why the run stopped before its checks
    interrupted: str | None = None  # why the run ended before its last check (Ctrl-C, a crash)
    waivers: Mapping[str, Waiver] = field(default_factory=dict)
    head: str = ""  # the migration head the run expects
    release: str | None = None
    # The database the run proved it is on (ServerIdentity.as_json()); the chain compares it.
    identity: dict[str, Any] | None = None
    operator: str = ""
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    repositories: dict[str, RepositoryState | None] = field(default_factory=dict)
    ops02: Ops02Decision | None = None  # what the phase's deciding step decided

    def decide(self, decision: Ops02Decision) -> None:
        """The deciding step hands its decision over, once: a second decision is a defect of
        the suite, never silently the newer one."""
        if not self.phase.decides:
            raise ValueError(f"phase {self.phase.name} takes no OPS-02 decision")
        if self.ops02 is not None:
            raise ValueError(f"the run already decided {self.ops02}; a second decision {decision}")
        self.ops02 = decision
        self.environment[DECISION_SHOWN] = str(decision)

    @property
    def rehearsal(self) -> bool:
        return self.target_kind == "ephemeral"

    def add(self, record: CheckRecord) -> None:
        record.summary = self.scrubber.scrub(record.summary)
        record.message = self.scrubber.scrub(record.message)
        record.evidence = [
            replace(e, label=self.scrubber.scrub(e.label), body=self.scrubber.scrub(e.body))
            for e in record.evidence
        ]
        if record.failure is not None:
            scrub = self.scrubber.scrub
            failure = record.failure
            record.failure = Failure(
                scrub(failure.title), scrub(failure.expected), scrub(failure.seen),
                scrub(failure.remedy),
            )  # fmt: skip
        self.checks.append(record)

    def step_outcomes(self) -> list[StepOutcome]:
        return [self._step_outcome(step) for step in self.phase.steps]

    def _step_outcome(self, step: Step) -> StepOutcome:
        """Passed only when every check the step requires ran and passed and none failed; a
        team's own check can fail a step but never stand in for a packaged one."""
        checks = tuple(c for c in self.checks if c.step_id == step.id)
        bad = [c for c in checks if c.outcome in ("failed", "error")]
        missing = [
            required.name
            for required in step.required(self.target_kind)
            if self._outcome_of(step.id, required.name) != "passed"
        ]
        if bad:
            outcome, line = FAILED, bad[0].summary
        elif missing:
            outcome, line = NOT_RUN, self._why_not_run(step.id, missing)
        else:
            good = [c.summary for c in checks if c.outcome == "passed"]
            outcome, line = PASSED, "; ".join(good)
        waiver = self.waivers.get(step.id)
        unwaivable = [c for c in bad if not _packaged(step, c).waivable]
        if unwaivable:
            line = unwaivable[0].summary  # no waiver of the step covers it
        else:
            outcome = waived_outcome(waiver, {c.outcome for c in checks}) or outcome
        return StepOutcome(step, outcome, line, checks, waiver)

    def _outcome_of(self, step_id: str, check: str) -> str | None:
        return next(
            (c.outcome for c in self.checks if c.step_id == step_id and c.check == check), None
        )

    def _why_not_run(self, step_id: str, missing: list[str]) -> str:
        skipped = [
            c.summary
            for c in self.checks
            if c.step_id == step_id and c.check in missing and c.summary
        ]
        if skipped:
            return skipped[0]
        return f"required check(s) did not run (deselected or interrupted): {', '.join(missing)}"

    def gate(self, step: Step, role: Role, needs: tuple[str, ...] = ()) -> str | None:
        """Why a check of ``step`` in ``role`` must not run now, or None when it may.

        Every check waits for the steps its step (and the check itself) needs; an action also
        for every pre-flight of its step, which must have run and passed; a verification for
        the step's actions."""
        outcomes = {s.step.id: s for s in self.step_outcomes()}
        for needed in dict.fromkeys((*step.needs, *needs)):
            if not self._opens(outcomes[needed]):
                return f"{NOT_ATTEMPTED}: {needed} {_describe(outcomes[needed].outcome)}"
        earlier = {Role.ACTION: Role.PREFLIGHT, Role.VERIFICATION: Role.ACTION}.get(role)
        if earlier is None:
            return None
        for check in step.required(self.target_kind):
            if check.role is earlier and self._outcome_of(step.id, check.name) != "passed":
                state = self._outcome_of(step.id, check.name) or "did not run"
                return f"{NOT_ATTEMPTED}: {earlier} {check.name} of {step.id} {_describe(state)}"
        for record in self.checks:
            team_check = record.check is None and record.step_id == step.id
            if team_check and record.role is earlier and record.outcome != "passed":
                return (
                    f"{NOT_ATTEMPTED}: {earlier} {record.name} of {step.id} "
                    f"{_describe(record.outcome)}"
                )
        return None

    def _opens(self, outcome: StepOutcome) -> bool:
        """Whether a step lets the steps that need it run: passed, or waived where only a
        check it does not require failed (every check it requires ran and passed), or failed
        only by checks that do not hold back (``Check.holds_back``)."""
        if outcome.outcome == PASSED:
            return True
        if outcome.outcome not in (FAILED, WAIVED):
            return False
        step = outcome.step
        required = step.required(self.target_kind)
        if outcome.outcome == WAIVED:
            return all(self._outcome_of(step.id, check.name) == "passed" for check in required)
        # Failed by a check that does not hold back: the others open it as they would alone
        # (every required one passed; any other failure waived).
        if not all(
            self._outcome_of(step.id, check.name) == "passed"
            for check in required
            if check.holds_back
        ):
            return False
        bad = [c for c in outcome.checks if c.outcome in ("failed", "error")]
        holding = {c.outcome for c in bad if _packaged(step, c).holds_back}
        return not holding or waived_outcome(outcome.waiver, holding) == WAIVED

    def verdict(self) -> Verdict:
        # A waived step (failure waived, or not run by its waiver) neither fails nor leaves
        # the phase incomplete; the verdict line names it.
        if self.aborted:
            return Verdict.FAIL
        if self.interrupted:
            return Verdict.INTERRUPTED
        outcomes = [s.outcome for s in self.step_outcomes()]
        if FAILED in outcomes:
            return Verdict.FAIL
        if NOT_RUN in outcomes:
            return Verdict.INCOMPLETE
        return Verdict.PASS

    def decision(self) -> Ops02Decision | None:
        """A deciding phase's GO / HOLD / ROLLBACK: GO only when every step passed and OPS-02
        said GO; HOLD when OPS-02 decided nothing; a dry run says what it would decide."""
        if not self.phase.decides:
            return None
        ops02 = self.ops02
        if ops02 is None:
            return Ops02Decision(Ops02Verdict.HOLD)
        if ops02.go and self.verdict() is not Verdict.PASS:
            return Ops02Decision(Ops02Verdict.HOLD)
        return ops02

    def as_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "plugin_version": __version__,
            "phase": self.phase.name,
            "target": self.target,
            "target_kind": self.target_kind,
            "rehearsal": self.rehearsal,
            "verdict": str(self.verdict()),
            "decision": _decision_json(self.decision()),
            "aborted": self.aborted,
            "interrupted": self.interrupted,
            "head": self.head,
            "release": self.release,
            "identity": self.identity,
            "operator": self.operator,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "duration_s": (
                round((self.finished - self.started).total_seconds(), 3)
                if self.started and self.finished
                else None
            ),
            "repositories": {
                name: state.as_json() if state else None
                for name, state in self.repositories.items()
            },
            "counts": count_outcomes(self.checks),
            "steps": [
                {
                    "id": s.step.id,
                    "title": s.step.title,
                    "outcome": s.outcome,
                    "evidence": s.evidence,
                    "waiver": s.waiver.as_json() if s.waiver else None,
                    "required": [c.name for c in s.step.required(self.target_kind)],
                    "checks": [
                        {
                            "name": c.name,
                            "check": c.check,
                            "role": str(c.role),
                            "outcome": c.outcome,
                            "summary": c.summary,
                            "failure": asdict(c.failure) if c.failure else None,
                            "message": c.message,
                            "evidence": [asdict(e) for e in c.evidence],
                        }
                        for c in s.checks
                    ],
                }
                for s in self.step_outcomes()
            ],
            "environment": dict(self.environment),
        }


def _decision_json(decision: Ops02Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {"verdict": str(decision.verdict), "dry_run": decision.dry_run}


CHECK_OUTCOMES = ("passed", "failed", "error", "skipped")


def count_outcomes(checks: Iterable[CheckRecord]) -> dict[str, int]:
    """Each check outcome's count, in a fixed order (the JSON's and the page's)."""
    outcomes = [check.outcome for check in checks]
    return {outcome: outcomes.count(outcome) for outcome in CHECK_OUTCOMES}


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _describe(outcome: str) -> str:
    """A step's or check's outcome as the reason a later check did not run."""
    return {
        FAILED: "failed",
        "error": "failed with an error",
        NOT_RUN: "did not run",
        "skipped": "did not run",
        "did not run": "did not run",
    }.get(outcome, f"was {outcome}")


@dataclass(frozen=True)
class SignoffPaths:
    html: Path
    json: Path
    checksums: Path


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # the UTC start in a sign-off's name


def _safe(part: str) -> str:
    return _UNSAFE_NAME.sub("_", part)


def signoff_paths(folder: Path, phase: str, target: str, started: dt.datetime) -> SignoffPaths:
    """``<phase>-<target>-<UTC stamp>.{html,json,sha256}`` inside ``folder``, whatever the names
    hold: anything but letters, digits and ``._-`` becomes ``_``, so no separator survives."""
    folder = folder.resolve()
    stamp = started.astimezone(dt.UTC).strftime(STAMP_FORMAT)
    stem = folder / f"{_safe(phase)}-{_safe(target)}-{stamp}"
    return SignoffPaths(*(stem.with_name(f"{stem.name}.{s}") for s in ("html", "json", "sha256")))


def signed_at(path: Path, phase: str) -> dt.datetime | None:
    """When the run that wrote the sign-off JSON ``path`` of ``phase`` started, from the name
    ``signoff_paths`` gave it; None when it is no such name."""
    prefix = f"{_safe(phase)}-"
    if path.suffix != ".json" or not path.name.startswith(prefix):
        return None
    target, _, stamp = path.stem.removeprefix(prefix).rpartition("-")
    try:
        started = dt.datetime.strptime(stamp, STAMP_FORMAT)
    except ValueError:
        return None
    if not target or started.strftime(STAMP_FORMAT) != stamp:
        return None
    return started.replace(tzinfo=dt.UTC)


def signoffs_of(folder: Path, phase: str) -> list[Path]:
    """The sign-off JSONs of ``phase`` in ``folder``, oldest first (by the start in the name)."""
    found = [(signed_at(p, phase), p) for p in folder.glob(f"{_safe(phase)}-*.json")]
    return [p for started, p in sorted((s, p) for s, p in found if s is not None)]


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``: never through a symlink, never over an existing file, and
    never seen half-written. The data goes to a private temp file that is hard-linked into
    place; ``link`` fails on any existing name, a planted symlink included, and follows none."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o644)
        place_new(Path(temp), path)
    finally:
        Path(temp).unlink(missing_ok=True)


def place_new(source: Path, destination: Path) -> None:
    """Give ``source`` the name ``destination`` unless that name exists (file or symlink):
    then FileExistsError, and nothing is overwritten."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(
            f"{destination} already exists (a file or a symlink): a sign-off never overwrites "
            "one; remove it or choose another --signoff-dir"
        ) from None


def staged_html(final: Path) -> Path:
    """A private path (in a 0700 folder beside ``final``) for pytest-html to write the report
    to; ``place_staged`` then puts it in place without following a symlink at ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=".staging-")) / final.name


def place_staged(staged: Path, final: Path) -> None:
    try:
        if staged.is_file():
            place_new(staged, final)
    finally:
        staged.unlink(missing_ok=True)
        staged.parent.rmdir()


def write_json(record: RunRecord, path: Path) -> None:
    # Scrubbed once more as a whole: nothing secret may reach the artifact by any route.
    text = json.dumps(record.as_json(), indent=2, ensure_ascii=False)
    write_new(path, (record.scrubber.scrub(text) + "\n").encode())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(paths: list[Path], checksum_path: Path) -> None:
    """``sha256sum -c`` compatible, names relative to the checksum file."""
    lines = [f"{sha256_file(p)}  {p.name}" for p in paths if p.exists()]
    write_new(checksum_path, ("\n".join(lines) + "\n").encode())


_CHECKSUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")  # sha256sum's output format


def verify_checksums(path: Path) -> UnreadableSignoff | None:
    """``sha256sum -c`` of the ``.sha256`` beside the sign-off JSON ``path``, which must list
    it; None when every file it lists is unchanged, else why not."""
    sums = path.with_suffix(".sha256")
    rerun = "Rerun the phase for a fresh sign-off, or use the original from the release ticket."
    if not sums.is_file():
        return UnreadableSignoff(f"no checksum file {sums.name} beside it", rerun)
    listed: dict[str, str] = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        match = _CHECKSUM_LINE.fullmatch(line.strip())
        if match:
            listed[match.group(2)] = match.group(1).lower()
    if path.name not in listed:
        return UnreadableSignoff(f"{sums.name} does not list {path.name}", rerun)
    altered = [
        name
        for name, digest in listed.items()
        if not (path.parent / name).is_file() or sha256_file(path.parent / name) != digest
    ]
    if altered:
        return UnreadableSignoff(
            f"sha256 mismatch (changed or missing since signed): {', '.join(altered)}",
            f"The sign-off was altered after it was written and cannot be trusted. {rerun}",
        )
    return None


# --- Reading a sign-off back --------------------------------------------------------------

MAX_SIGNOFF_BYTES = 64 << 20  # a sign-off with all its evidence is a few MB; read no more


class UnreadableSignoff(ValueError):
    """Not a sign-off this plugin reads: why, and what to do."""

    def __init__(self, why: str, remedy: str) -> None:
        super().__init__(why)
        self.why = why
        self.remedy = remedy


@dataclass(frozen=True)
class SignedStep:
    """A step as a sign-off recorded it (its outcome as written; None when not a string)."""

    id: str
    outcome: str | None
    check_outcomes: tuple[str, ...]


@dataclass(frozen=True)
class Signoff:
    """A sign-off JSON read back: typed, of this plugin's schema version."""

    path: Path
    plugin_version: str
    phase: str
    target: str
    target_kind: str
    rehearsal: bool
    verdict: Verdict
    decision: Ops02Decision | None
    head: str | None
    release: str | None
    identity: Mapping[str, Any] | None
    steps: Mapping[str, SignedStep]  # by step id


def _forged() -> str:
    return (
        f"Use the sign-off JSON its phase wrote (this plugin, schema version {SCHEMA_VERSION}), "
        "unedited."
    )


def read_signoff(path: Path) -> Signoff:
    """The sign-off JSON at ``path``, typed; ``UnreadableSignoff`` for anything else: another
    schema version (named), a missing or malformed field, a file that is no JSON object."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SIGNOFF_BYTES + 1)
        if len(raw) > MAX_SIGNOFF_BYTES:
            raise ValueError(f"larger than {MAX_SIGNOFF_BYTES} bytes")
        document = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        document = f"{type(exc).__name__}: {exc}"
    if not isinstance(document, dict):
        raise UnreadableSignoff(
            f"not a sign-off JSON object ({document!r:.80})", "Give the sign-off JSON."
        )
    _check_version(document)
    text = {
        key: document.get(key)
        for key in ("plugin_version", "phase", "target", "target_kind", "verdict")
    }
    wrong = [key for key, value in text.items() if not isinstance(value, str) or not value]
    if not isinstance(document.get("rehearsal"), bool):
        wrong.append("rehearsal")
    if text["verdict"] not in list(Verdict):
        wrong.append("verdict")
    readable, decision = _read_decision(document.get("decision"))
    if not readable:
        wrong.append("decision")
    for key, types in (("head", str), ("release", str), ("identity", dict)):
        if not isinstance(document.get(key), types | None):
            wrong.append(key)
    for key, container in (("steps", list), ("environment", dict)):
        if not isinstance(document.get(key), container):
            wrong.append(key)
    if wrong:
        keys = [key for key in _FIELDS if key in wrong]
        raise UnreadableSignoff(f"missing or malformed: {', '.join(keys)}", _forged())
    return Signoff(
        path=path,
        plugin_version=str(text["plugin_version"]),
        phase=str(text["phase"]),
        target=str(text["target"]),
        target_kind=str(text["target_kind"]),
        rehearsal=bool(document["rehearsal"]),
        verdict=Verdict(str(text["verdict"])),
        decision=decision,
        head=document.get("head"),
        release=document.get("release"),
        identity=document.get("identity"),
        steps=_read_steps(document["steps"]),
    )


_FIELDS = (
    "plugin_version", "phase", "target", "target_kind", "rehearsal", "verdict", "decision",
    "head", "release", "identity", "steps", "environment",
)  # fmt: skip


def _check_version(document: Mapping[str, Any]) -> None:
    version = document.get("schema_version")
    if version == SCHEMA_VERSION and type(version) is int:
        return
    phase = document.get("phase")
    rerun = (
        f"Rerun {phase if isinstance(phase, str) else 'its phase'} with pytest-ledger-rollout "
        f"{__version__} for a sign-off of schema version {SCHEMA_VERSION}."
    )
    if type(version) is not int:
        why, remedy = "not a sign-off of this plugin", _forged()
    elif version < SCHEMA_VERSION:
        why = f"written by an earlier plugin in sign-off schema {version}"
        remedy = rerun
    else:
        why = f"written by a later plugin in sign-off schema {version}"
        remedy = f"Use the plugin version that wrote it, or {rerun[0].lower()}{rerun[1:]}"
    raise UnreadableSignoff(
        f"schema_version {version!r}, not {SCHEMA_VERSION}: {why} (this plugin, {__version__}, "
        f"reads schema version {SCHEMA_VERSION} only)",
        remedy,
    )


def _read_decision(value: object) -> tuple[bool, Ops02Decision | None]:
    """The JSON's ``decision`` (None or an ``Ops02Decision``), and whether it was well-formed."""
    if value is None:
        return True, None
    if not isinstance(value, dict) or set(value) != {"verdict", "dry_run"}:
        return False, None
    verdict, dry_run = value["verdict"], value["dry_run"]
    if verdict not in list(Ops02Verdict) or not isinstance(dry_run, bool):
        return False, None
    return True, Ops02Decision(Ops02Verdict(verdict), dry_run=dry_run)


def _read_steps(steps: list[Any]) -> dict[str, SignedStep]:
    """The steps with a text id; their outcome and their checks' outcomes where they are text
    (a malformed entry proves nothing, and is judged as such, not a crash)."""
    read: dict[str, SignedStep] = {}
    for step in steps:
        if not isinstance(step, dict) or not _text(step.get("id")):
            continue
        checks = step.get("checks")
        outcomes = tuple(
            c["outcome"]
            for c in (checks if isinstance(checks, list) else [])
            if isinstance(c, dict) and _text(c.get("outcome"))
        )
        outcome = step.get("outcome")
        read[step["id"]] = SignedStep(
            step["id"], outcome if isinstance(outcome, str) else None, outcomes
        )
    return read


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


SIGNATURE_NAMESPACE = "pytest-ledger-rollout"  # ssh-keygen -Y's namespace for sign-offs


_SIGN_TIMEOUT_S = 30


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


def verify_signature(path: Path, allowed_signers: Path) -> str | UnreadableSignoff:
    """The principal whose key in ``allowed_signers`` signed ``path`` (its ``.sig``), or why
    none did."""
    sig = path.with_name(path.name + ".sig")
    remedy = (
        "Use the sign-off as its phase wrote and signed it, with a key listed in "
        f"{allowed_signers}; rerun the predecessor phase with [signoff] signing_key set."
    )
    if not sig.is_file():
        return UnreadableSignoff(f"unsigned: no {sig.name} beside it", remedy)
    found = _ssh_keygen(["-Y", "find-principals", "-f", str(allowed_signers), "-s", str(sig)], b"")
    principals = found.stdout.decode(errors="replace").split()
    if found.returncode != 0 or not principals:
        return UnreadableSignoff(f"{sig.name} is not from a key in {allowed_signers.name}", remedy)
    data = path.read_bytes()
    for principal in principals:
        verified = _ssh_keygen(
            ["-Y", "verify", "-f", str(allowed_signers), "-I", principal,
             "-n", SIGNATURE_NAMESPACE, "-s", str(sig)],
            data,
        )  # fmt: skip
        if verified.returncode == 0:
            return principal
    return UnreadableSignoff(
        f"{sig.name} does not verify: the file changed after it was signed", remedy
    )


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
