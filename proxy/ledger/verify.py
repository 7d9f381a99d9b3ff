"""`creditgate verify`: audit the ledger (CONTRACT.md, Money).

Two things fail it:
- a violated invariant: a row of the view `creditgate.invariant_violations` (0002_ledger.sql, extended
  in 0005_grant_expiry.sql; empty = healthy);
- overage: a request charged above its hold, or beyond the credit left (a late charge after a void),
  recorded as a receivable. The ledger keeps that bookkeeping so no usage is dropped, but the hold must
  bound every charge, so any overage is a defect (invariant 1). The view `creditgate.overage_by_org`
  reports it per org: how many requests, how many millicredits (each request counted once, for the
  larger of its two excesses). A later grant that nets the receivable does not erase it.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TextIO

import asyncpg


@dataclass(frozen=True, slots=True)
class Overage:
    """Overage found in one org's usage records."""

    org_id: str
    requests: int
    millicredits: int

    def __str__(self) -> str:
        return (f"overage {self.org_id}: {self.requests} request(s) charged above their hold or the credit left, "
                f"{self.millicredits} millicredits")


@dataclass(frozen=True, slots=True)
class Report:
    violations: list[str]  # "<invariant> <subject>: <detail>"
    overage: list[Overage]  # sorted by org id

    @property
    def healthy(self) -> bool:
        return not self.violations and not self.overage


async def audit(dsn: str) -> Report:
    """Read both views in one snapshot."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                "SELECT invariant, subject, detail FROM creditgate.invariant_violations ORDER BY invariant, subject")
            over = await conn.fetch(
                "SELECT org_id, requests, millicredits FROM creditgate.overage_by_org ORDER BY org_id")
    finally:
        await conn.close()
    return Report([f"{r['invariant']} {r['subject']}: {r['detail']}" for r in rows],
                  [Overage(r["org_id"], int(r["requests"]), int(r["millicredits"])) for r in over])


async def verify(dsn: str) -> list[str]:
    """One line per problem (violated invariants, then overage per org); empty when the ledger is clean."""
    report = await audit(dsn)
    return report.violations + [str(o) for o in report.overage]


def main_verify(dsn: str, out: TextIO | None = None) -> int:
    """Print a report; 0 when every invariant holds and there is no overage, 1 otherwise, 2 when the ledger
    cannot be read."""
    out = out or sys.stdout
    try:
        report = asyncio.run(audit(dsn))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"verify: cannot read the ledger: {type(exc).__name__}", file=out)
        return 2
    if report.healthy:
        print("verify: all ledger invariants hold", file=out)
        return 0
    if report.violations:
        print(f"verify: {len(report.violations)} invariant violation(s):", file=out)
        for line in report.violations:
            print(f"  {line}", file=out)
    if report.overage:
        total = sum(o.millicredits for o in report.overage)
        print(f"verify: overage (a defect: the hold bounds every charge) in {len(report.overage)} org(s), "
              f"{total} millicredits:", file=out)
        for o in report.overage:
            print(f"  {o}", file=out)
    return 1
