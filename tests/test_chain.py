"""The phase chain: predecessor sign-offs found, verified by sha256, and judged, both ways."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_ledger_rollout.config import ConfigError, SignoffConfig, load_config
from pytest_ledger_rollout.phases.chain import check_predecessor
from pytest_ledger_rollout.phases.signoff import SIGNATURE_NAMESPACE, sign_signoff, write_checksums
from pytest_ledger_rollout.results import CheckResult

from .support import HEAD, IDENTITY, RELEASE, passed_steps, write_config, write_signoff


def check(folder: Path, phase: str = "prd-pilot", **options: Any) -> CheckResult:
    settings: dict[str, Any] = {
        "head": HEAD,
        "release": RELEASE,
        "rehearsal": False,
        "identity": IDENTITY,
    }
    return check_predecessor(phase, signoff_dir=folder, **{**settings, **options})


def refusal(result: CheckResult) -> str:
    assert result.failure is not None, result.summary
    return "\n".join([result.failure.title, result.failure.seen, result.failure.remedy])


def test_newest_pass_of_the_predecessor_satisfies_the_chain(tmp_path: Path) -> None:
    write_signoff(tmp_path, "stg-roll", stamp="20261127T090000Z", verdict="FAIL")
    newest = write_signoff(tmp_path, "stg-roll", stamp="20261128T090000Z")
    write_signoff(tmp_path, "stg-mig", stamp="20261129T090000Z")  # another phase: not a candidate
    result = check(tmp_path)
    assert result.ok, result.failure
    assert result.summary.startswith(f"stg-roll PASS: {newest.name} (sha256 ")
    assert result.facts["stg-roll sign-off"].startswith(f"{newest.name} sha256:")
    assert "2 candidates, newest stg-roll-staging-20261128T090000Z.json" in result.evidence[0].body


def test_missing_predecessor_names_what_was_looked_for(tmp_path: Path) -> None:
    text = refusal(check(tmp_path / "reports", "stg-roll"))
    assert "No valid stg-mig sign-off: not found" in text
    assert f"{tmp_path}/reports/stg-mig-*-<UTC>.json: refused because" in text
    assert "Run `pytest --phase=stg-mig`" in text
    assert "not found" in refusal(check(tmp_path, path=tmp_path / "elsewhere.json"))


def test_newest_failed_predecessor_is_refused_even_after_an_older_pass(tmp_path: Path) -> None:
    write_signoff(tmp_path, "stg-roll", stamp="20261127T090000Z")
    write_signoff(tmp_path, "stg-roll", stamp="20261128T090000Z", verdict="FAIL")
    text = refusal(check(tmp_path))
    assert "stg-roll-staging-20261128T090000Z.json: refused because" in text
    assert "- verdict is FAIL, not PASS" in text


@pytest.mark.parametrize("decision", ["GO", "HOLD", None])
def test_ga_needs_a_go_of_the_pilot(tmp_path: Path, decision: str | None) -> None:
    fields: dict[str, Any] = {"decision": decision} if decision else {}
    write_signoff(tmp_path, "prd-pilot", target="prod", **fields)
    result = check(tmp_path, "prd-ga")
    if decision == "GO":
        assert result.ok, result.failure
    else:
        assert f"decision is {decision or '(missing)'}, not GO" in refusal(result)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (
            lambda signoff: signoff.write_text(signoff.read_text().replace('"FAIL"', '"PASS"')),
            "sha256 mismatch (changed or missing since signed): {stem}.json",
        ),
        (
            lambda signoff: signoff.with_suffix(".html").write_text("<html>edited</html>"),
            "sha256 mismatch (changed or missing since signed): {stem}.html",
        ),
        (lambda signoff: signoff.with_suffix(".sha256").unlink(), "no checksum file {stem}.sha256"),
        (
            lambda signoff: signoff.with_suffix(".sha256").write_text(""),
            "{stem}.sha256 does not list {stem}.json",
        ),
    ],
    ids=["json edited", "html edited", "checksum removed", "checksum emptied"],
)
def test_tampered_signoff_is_refused(tmp_path: Path, tamper: Any, reason: str) -> None:
    signoff = write_signoff(tmp_path, "stg-roll", verdict="FAIL")
    tamper(signoff)
    text = refusal(check(tmp_path))
    assert f"{signoff}: refused because" in text
    assert reason.format(stem=signoff.stem) in text
    assert "verdict" not in text  # an untrusted file is not read for its verdict


def test_other_head_or_release_is_refused(tmp_path: Path) -> None:
    write_signoff(tmp_path, "stg-roll", head="20251222_01_reconciliation_findings")
    text = refusal(check(tmp_path))
    assert f"migration head 20251222_01_reconciliation_findings, not {HEAD}" in text
    other = tmp_path / "other"
    write_signoff(other, "stg-roll", release="2026.11.2")
    assert f"release 2026.11.2, this run's release {RELEASE}" in refusal(check(other))
    unreleased = tmp_path / "unreleased"
    write_signoff(unreleased, "stg-roll", release=None)
    assert f"release (missing), this run's release {RELEASE}" in refusal(check(unreleased))
    text = refusal(check(tmp_path / "other", release=None))
    assert "this run's release (not given)" in text
    assert "Give the release this run signs off." in text


def test_rehearsal_never_satisfies_a_real_target(tmp_path: Path) -> None:
    write_signoff(tmp_path, "stg-roll", target="local", rehearsal=True)
    assert "a rehearsal never satisfies a real target's chain" in refusal(check(tmp_path))
    assert check(tmp_path, rehearsal=True).ok  # a rehearsal chain may build on rehearsals


def test_explicit_path_is_checked_the_same_way(tmp_path: Path) -> None:
    kept = write_signoff(tmp_path / "ticket", "stg-roll", stamp="20261101T000000Z")
    write_signoff(tmp_path / "reports", "stg-roll", verdict="FAIL")
    result = check(tmp_path / "reports", path=kept)
    assert result.ok, result.failure
    assert "given explicitly" in result.evidence[0].body
    mig = write_signoff(tmp_path / "ticket", "stg-mig")
    assert "it is a 'stg-mig' sign-off" in refusal(check(tmp_path / "reports", path=mig))
    kept.write_text("[]")
    kept.with_suffix(".sha256").unlink()
    write_checksums([kept], kept.with_suffix(".sha256"))
    assert "not a sign-off JSON object" in refusal(check(tmp_path, path=kept))


# --- what a trustworthy sign-off is -----------------------------------------------------------


def test_a_signoff_of_another_database_is_refused(tmp_path: Path) -> None:
    write_signoff(tmp_path, "stg-mig", identity={**IDENTITY, "system_identifier": "42"})
    text = refusal(check(tmp_path, "stg-roll"))
    assert "another database: system_identifier '42'" in text
    # Without a system identifier on one side: database, address and port decide.
    unknown = {**IDENTITY, "system_identifier": None}
    assert check(tmp_path / "x", "stg-roll").failure is not None
    same_place = tmp_path / "same"
    write_signoff(same_place, "stg-mig", identity=unknown)
    assert check(same_place, "stg-roll").ok
    assert "another database: server_port 5432 (this run: 6543)" in refusal(
        check(same_place, "stg-roll", identity={**unknown, "server_port": 6543})
    )


def test_unknown_identity_of_this_run_is_refused_where_the_database_must_match(
    tmp_path: Path,
) -> None:
    write_signoff(tmp_path, "stg-mig")
    assert "this run's database identity is unknown" in refusal(
        check(tmp_path, "stg-roll", identity=None)
    )
    write_signoff(tmp_path, "stg-roll", identity=None)  # staging's, for a production phase
    assert check(tmp_path, "prd-pilot", identity=None).ok


def test_a_rehearsal_chain_does_not_compare_throwaway_databases(tmp_path: Path) -> None:
    write_signoff(tmp_path, "stg-mig", target="local", rehearsal=True, identity=None)
    assert check(tmp_path, "stg-roll", rehearsal=True, identity=None).ok


def test_a_hand_written_five_field_signoff_is_refused(tmp_path: Path) -> None:
    stem = tmp_path / "stg-roll-staging-20261128T140512Z"
    document = {"phase": "stg-roll", "verdict": "PASS", "rehearsal": False, "steps": []}
    document["environment"] = {"alembic head (expected)": HEAD, "release": RELEASE}
    stem.with_suffix(".json").write_text(json.dumps(document))
    stem.with_suffix(".html").write_text("<html></html>")
    write_checksums(
        [stem.with_suffix(".html"), stem.with_suffix(".json")], stem.with_suffix(".sha256")
    )
    assert "schema_version None, not 3: not a sign-off of this plugin" in refusal(check(tmp_path))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda steps: steps.pop(), "step 3.3 missing"),
        (lambda steps: steps[1].update(outcome="waived (not run)"), "step 3.1 waived (not run)"),
        (lambda steps: steps[0].update(checks=[]), "step 3.0 passed"),
        (lambda steps: steps[2].update(outcome="failed"), "step 3.2 failed"),
    ],
    ids=["step missing", "waived without running", "passed without a check", "failed"],
)
def test_every_step_of_the_predecessor_must_have_passed(
    tmp_path: Path, change: Any, reason: str
) -> None:
    steps = passed_steps("prd-pilot")
    change(steps)
    write_signoff(tmp_path, "prd-pilot", target="prod", decision="GO", steps=steps)
    assert f"not every step passed: {reason}" in refusal(check(tmp_path, "prd-ga"))


def test_a_failure_waived_after_its_checks_ran_counts(tmp_path: Path) -> None:
    steps = passed_steps("prd-pilot")
    steps[1].update(outcome="waived", checks=[{**steps[1]["checks"][0], "outcome": "failed"}])
    write_signoff(tmp_path, "prd-pilot", target="prod", decision="GO", steps=steps)
    assert check(tmp_path, "prd-ga").ok


@pytest.mark.parametrize("missing", ["plugin_version", "target_kind", "steps"])
def test_malformed_schema_is_refused(tmp_path: Path, missing: str) -> None:
    fields: dict[str, Any] = {missing: None}
    write_signoff(tmp_path, "stg-roll", **fields)
    assert f"missing or malformed: {missing}" in refusal(check(tmp_path))


# --- signed sign-offs (real ssh-keygen) ------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    made = {}
    for name in ("release", "intruder"):
        made[name] = folder / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(made[name])],
            check=True,
        )
    public = (folder / "release.pub").read_text().strip()
    made["allowed"] = folder / "allowed_signers"
    made["allowed"].write_text(f'release@example.com namespaces="{SIGNATURE_NAMESPACE}" {public}\n')
    return made


def signed_check(folder: Path, keys: dict[str, Path]) -> CheckResult:
    return check(folder, "stg-roll", allowed_signers=keys["allowed"])


def test_a_signed_signoff_verifies_and_names_its_signer(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    signoff = write_signoff(tmp_path / "r", "stg-mig")
    assert sign_signoff(signoff, keys["release"]) == signoff.with_name(signoff.name + ".sig")
    result = signed_check(tmp_path / "r", keys)
    assert result.ok, result.failure
    assert "signed by release@example.com" in result.summary
    assert any("release@example.com (verified against" in e.body for e in result.evidence)


def test_a_fail_edited_to_pass_with_its_sha256_recomputed_is_refused(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    signoff = write_signoff(tmp_path / "r", "stg-mig", verdict="FAIL")
    sign_signoff(signoff, keys["release"])
    signoff.write_text(signoff.read_text().replace('"FAIL"', '"PASS"'))
    signoff.with_suffix(".sha256").unlink()
    write_checksums([signoff.with_suffix(".html"), signoff], signoff.with_suffix(".sha256"))
    assert check(tmp_path / "r", "stg-roll").ok  # a digest alone cannot tell
    text = refusal(signed_check(tmp_path / "r", keys))
    assert f"{signoff.name}.sig does not verify" in text


def test_unsigned_or_foreign_signed_predecessors_are_refused(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    signoff = write_signoff(tmp_path / "r", "stg-mig")
    assert f"unsigned: no {signoff.name}.sig" in refusal(signed_check(tmp_path / "r", keys))
    sign_signoff(signoff, keys["intruder"])
    assert "is not from a key in allowed_signers" in refusal(signed_check(tmp_path / "r", keys))


def test_signing_never_overwrites_a_signature(tmp_path: Path, keys: dict[str, Path]) -> None:
    signoff = write_signoff(tmp_path / "r", "stg-mig")
    sign_signoff(signoff, keys["release"])
    with pytest.raises(FileExistsError, match="never overwrites"):
        sign_signoff(signoff, keys["intruder"])


def test_signoff_keys_are_files_relative_to_the_config(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    extra = f'[signoff]\nsigning_key = "keys/release"\nallowed_signers = "{keys["allowed"]}"\n'
    config = load_config(write_config(tmp_path, database="x", extra=extra))
    assert config.signoff == SignoffConfig(keys["release"], keys["allowed"])
    missing = write_config(tmp_path, database="x", extra='[signoff]\nsigning_key = "nope"\n')
    with pytest.raises(ConfigError, match=r"signoff\.signing_key: no such file"):
        load_config(missing)


@pytest.mark.parametrize(
    "steps",
    [
        [{"id": ["3.0"], "outcome": "passed"}],
        [{"id": "3.0", "outcome": "passed", "checks": 7}],
        [{"id": "3.0", "outcome": ["passed"], "checks": [{"outcome": {"x": 1}}]}],
        ["3.0", None, 1.5],
    ],
)
def test_a_hostile_steps_list_is_refused_not_a_crash(tmp_path: Path, steps: Any) -> None:
    write_signoff(tmp_path, "stg-roll", steps=steps)
    assert "not every step passed: step 2.0" in refusal(check(tmp_path))


@pytest.mark.parametrize(
    ("content", "reason"),
    [("[" * 100_000 + "]" * 100_000, "RecursionError"), ("{", "JSONDecodeError")],
)
def test_a_hostile_json_is_refused_not_a_crash(tmp_path: Path, content: str, reason: str) -> None:
    signoff = write_signoff(tmp_path, "stg-roll")
    signoff.write_text(content)
    signoff.with_suffix(".sha256").unlink()
    write_checksums([signoff], signoff.with_suffix(".sha256"))
    assert f"not a sign-off JSON object ('{reason}" in refusal(check(tmp_path))
