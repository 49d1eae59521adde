"""The phase chain: predecessor sign-offs found, verified by sha256, and judged, both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_ledger_rollout.chain import check_predecessor
from pytest_ledger_rollout.evidence import write_checksums
from pytest_ledger_rollout.results import CheckResult

from .support import HEAD, RELEASE, write_signoff


def check(folder: Path, phase: str = "prd-pilot", **options: Any) -> CheckResult:
    settings: dict[str, Any] = {"head": HEAD, "release": RELEASE, "rehearsal": False}
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
    write_checksums([kept], kept.with_suffix(".sha256"))
    assert "not a sign-off JSON object" in refusal(check(tmp_path, path=kept))
