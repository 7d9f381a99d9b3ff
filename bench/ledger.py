"""Ledger benchmark: reserve+settle pairs per second, group commit vs the naive design.

`python -m bench.ledger` starts its own PostgreSQL with fsync on (synchronous_commit on), migrates,
and measures on one hot pool and spread over 1,000 pools, at concurrency 1, 32 and 128:
- group commit: `PgLedger` as shipped (per-org queue, one `ledger_batch` transaction per flush);
- naive: `PgLedger(batching=False)`, every reserve and every settle its own transaction on the pool
  row (one connection per concurrent client).
Each cell runs `--seconds` (default 4). At the end the audit view must be empty (no overspend).
The client runs in this process on the same machine, so it competes with PostgreSQL for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time
from decimal import Decimal

import asyncpg

from devstack import services
from proxy.db.migrate import migrate
from proxy.db.pool import create_pool
from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from proxy.ledger.types import HoldRequest, Settlement
from proxy.ledger.verify import verify

CONCURRENCY = (1, 32, 128)
POOLS = (1, 1000)
USER = "usr_bench"


async def seed(dsn: str, orgs: int) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO creditgate.users (id, email) VALUES ($1, 'bench@example.com')", USER)
    await conn.execute("""INSERT INTO creditgate.orgs (id, name, tier)
                          SELECT 'org_b' || i, 'bench', 'starter' FROM generate_series(0, $1 - 1) i""", orgs)
    await conn.execute("""INSERT INTO creditgate.memberships (org_id, user_id)
                          SELECT 'org_b' || i, $2 FROM generate_series(0, $1 - 1) i""", orgs, USER)
    await conn.execute("""SELECT creditgate.add_credit('org_b' || i, 'grant', 1000000000000, 'bench', 'seed', NULL,
                          'bench') FROM generate_series(0, $1 - 1) i""", orgs)
    await conn.close()


async def cell(ledger: PgLedger, pools: int, concurrency: int, seconds: float, tag: str) -> tuple[float, int]:
    """(pairs per second, operations that failed): each client loops reserve(100) then settle(charge 60).
    A failure is the 2 s statement timeout (`ledger_unavailable`): the naive design's hot-row queue."""
    ids = itertools.count()
    settlement = Settlement(10, 20, 60, 60, "provider", "fake-small", "openai", "dep")
    stop = time.monotonic() + seconds
    done = failed = 0

    async def client() -> None:
        nonlocal done, failed
        rng = random.Random()
        while time.monotonic() < stop:
            org = f"org_b{rng.randrange(pools)}"
            rid = f"{tag}-{next(ids)}"
            try:
                await ledger.reserve(HoldRequest(org, USER, "key_b", rid, 100, "fake-small", False, 10,
                                                 Decimal(1), Decimal(2), Decimal(1), Decimal(2)))
                await ledger.settle(org, rid, settlement)
                done += 1
            except ProxyError as exc:
                if exc.code != "ledger_unavailable":
                    raise
                failed += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / (time.monotonic() - started), failed


async def design_cell(dsn: str, *, batching: bool, pools: int, concurrency: int, seconds: float,
                      tag: str) -> tuple[float, int]:
    """One cell with its own ledger: group commit (`batching`, 8 connections, as a replica has) or the naive
    design (one connection per client). (pairs per second, operations that timed out); see `cell`."""
    db = await create_pool(dsn, min_size=1, max_size=8 if batching else max(concurrency, 1))
    ledger = PgLedger(db, hold_ttl_seconds=120, batching=batching)
    try:
        return await cell(ledger, pools, concurrency, seconds, tag)
    finally:
        await ledger.close()


async def prepare(dsn: str, pools: int) -> None:
    """Migrates `dsn` and seeds `pools` orgs (org_b0...) with ample credit and one member."""
    await migrate(dsn)
    await seed(dsn, pools)


async def run(dsn: str, seconds: float) -> list[tuple[str, int, int, float, int]]:
    await prepare(dsn, max(POOLS))
    results = []
    for design in ("group commit", "naive"):
        for pools in POOLS:
            for c in CONCURRENCY:
                rate, failed = await design_cell(dsn, batching=design == "group commit", pools=pools,
                                                 concurrency=c, seconds=seconds, tag=f"{design[0]}{pools}-{c}")
                results.append((design, pools, c, rate, failed))
                print(f"  {design:<13} pools={pools:<5} c={c:<4} {rate:8.0f} pairs/s  {failed} timed out",
                      flush=True)
    await sweep(dsn)
    problems = await verify(dsn)
    print("verify:", "all ledger invariants hold" if not problems else problems)
    return results


async def sweep(dsn: str) -> None:
    """Holds whose reserve timed out (outcome unknown) are voided best effort; expire the rest."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO creditgate.clock_skew (skew) VALUES (interval '1 hour')")
    while await conn.fetchval("SELECT creditgate.expire_holds(1000)"):
        pass
    await conn.execute("DELETE FROM creditgate.clock_skew")
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each cell")
    args = parser.parse_args()
    print(f"ledger bench: PostgreSQL fsync=on synchronous_commit=on, {args.seconds:g} s per cell")
    pg = services.start_postgres(fsync=True, extra={"autovacuum_naptime": "1"})  # see bench.gateway_full
    try:
        results = asyncio.run(run(services.create_database(pg.url, "bench_ledger"), args.seconds))
    finally:
        pg.stop()
    print("\nreserve+settle pairs per second (in brackets: operations that hit the 2 s statement timeout)")
    print(f"{'design':<14}{'pools':>6}" + "".join(f"{'c=' + str(c):>16}" for c in CONCURRENCY))
    for design in ("group commit", "naive"):
        for pools in POOLS:
            row = {c: (r, f) for d, p, c, r, f in results if d == design and p == pools}
            cells = [f"{row[c][0]:.0f}" + (f" ({row[c][1]})" if row[c][1] else "") for c in CONCURRENCY]
            print(f"{design:<14}{pools:>6}" + "".join(f"{x:>16}" for x in cells))


if __name__ == "__main__":
    main()
