"""`creditgate verify`: audit the ledger invariants (CONTRACT.md, Money) through the view
`creditgate.invariant_violations` (defined in 0002_ledger.sql; empty = healthy)."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

import asyncpg


async def verify(dsn: str) -> list[str]:
    """One line per violated invariant: "<invariant> <subject>: <detail>"; empty when all hold."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT invariant, subject, detail FROM creditgate.invariant_violations ORDER BY invariant, subject"
        )
    finally:
        await conn.close()
    return [f"{r['invariant']} {r['subject']}: {r['detail']}" for r in rows]


def main_verify(dsn: str, out: TextIO | None = None) -> int:
    """Print a report; 0 when every invariant holds, 1 when one is violated, 2 when the ledger cannot be read."""
    out = out or sys.stdout
    try:
        problems = asyncio.run(verify(dsn))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"verify: cannot read the ledger: {type(exc).__name__}", file=out)
        return 2
    if not problems:
        print("verify: all ledger invariants hold", file=out)
        return 0
    print(f"verify: {len(problems)} invariant violation(s):", file=out)
    for line in problems:
        print(f"  {line}", file=out)
    return 1
