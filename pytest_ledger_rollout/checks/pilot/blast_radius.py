"""3.2: enforcement is on for the pilot tenants and for no other tenant (the blast radius);
the pilots' backfill is ``ledger.check_no_mismatch(..., tenants=pilots)``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection

from pytest_ledger_rollout.checks.flags import FlagRelation
from pytest_ledger_rollout.checks.tenants import (
    TenantTables,
    flag_scope,
    scope_evidence,
)
from pytest_ledger_rollout.results import CheckResult, Failure, failed, passed


def check_pilot_flags(
    connection: Connection,
    flags: FlagRelation,
    tables: TenantTables,
    keys: Sequence[str],
    pilots: Sequence[str],
) -> CheckResult:
    """3.2: each key on for every pilot tenant and off for every other (blast radius)."""
    sql, scopes = flag_scope(connection, flags, tables, keys, pilots)
    problems = [line for s in scopes for line in s.problems("outside the pilot")]
    if not pilots or not keys:
        problems.insert(0, "no pilot tenant or no flag configured")
    evidence = scope_evidence(sql, scopes)
    if problems:
        return failed(
            Failure(
                "The pilot flags are not on exactly for the pilot tenants",
                expected=f"{', '.join(keys)}: on for {', '.join(pilots) or '(no pilot)'}, "
                "off for every other tenant",
                seen="\n".join(problems),
                remedy=(
                    "Keep each flag's global row off and set tenant rows: on for each pilot "
                    'tenant (PUT /admin/flags/{key} {"enabled": true, "tenant": "<pilot>"}), off '
                    "or absent for the others. A global row on reaches every tenant without a "
                    "row of its own."
                ),
            ),
            *evidence,
        )
    return passed(
        f"{', '.join(keys)} on for {', '.join(pilots)} only "
        f"(off for the other {scopes[0].tenants - len(pilots)} tenants)",
        *evidence,
    )
