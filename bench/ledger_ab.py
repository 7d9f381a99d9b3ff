"""Two definitions of `creditgate.ledger_batch` side by side in one session: `python -m bench.ledger_ab A.sql B.sql`.

Each file holds a `CREATE [OR REPLACE] FUNCTION ledger_batch(` ... `END $$;` (a migration, or that function cut
out of one). Both are installed under other names (`ledger_batch_a`, `ledger_batch_b`) in one migrated
database on its own PostgreSQL (fsync off: the function's own cost, not the disk's), with a history of
requests spread over 100 orgs and analyzed, as a production ledger's tables are. Then rounds alternate A and
B (the order flips every round) on one connection: `--items` reserves of one org in one call, then their
settles in one call. It prints the median microseconds per item of each, and B's ratio to A, so run-to-run noise of the
machine cancels out. How migration 0011's generic plans were measured (one-item reserve 1.87 -> 0.86 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import statistics
import time
from decimal import Decimal
from pathlib import Path

import asyncpg

from bench.ledger import USER, prepare
from devstack import services
from proxy.ledger.batch import BATCH_SQL, batch_args
from proxy.ledger.types import HoldRequest, Settlement

ORGS = 100
SETTLEMENT = Settlement(10, 20, 60, 60, "provider", "fake-small", "openai", "dep")


def function_sql(path: Path, name: str) -> str:
    """The `ledger_batch` definition in `path`, renamed `name`."""
    text = path.read_text()
    found = re.search(r"CREATE (OR REPLACE )?FUNCTION ledger_batch\(", text)
    if found is None:
        raise SystemExit(f"{path}: no CREATE FUNCTION ledger_batch( in it")
    start = found.start()
    end = text.index("END $$;", start) + len("END $$;")
    body = text[start:end].replace("FUNCTION ledger_batch(", f"FUNCTION {name}(", 1)
    return "SET search_path = creditgate;\n" + body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def holds(orgs: list[str], ids: itertools.count[int]) -> list[tuple[HoldRequest, str]]:
    """One reserve per entry of `orgs` (sorted, as the group commit sends them)."""
    return [(HoldRequest(org, USER, "key_b", f"r{next(ids)}", 100, "fake-small", False, 10, Decimal(1), Decimal(2),
                         Decimal(1), Decimal(2), price_version="v1"), "owner") for org in sorted(orgs)]


async def pair(conn: asyncpg.Connection, sql: str, reserves: list[tuple[HoldRequest, str]]) -> tuple[float, float]:
    """(seconds of the reserve call, of the settle call); raises if an item was not held or posted."""
    started = time.perf_counter()
    rows = await conn.fetch(sql, *batch_args(120, reserves, []))
    held = time.perf_counter()
    settled = await conn.fetch(sql, *batch_args(120, [], [(r.org_id, r.request_id, SETTLEMENT) for r, _ in reserves]))
    done = time.perf_counter()
    if {r["status"] for r in rows} != {"held"} or {r["status"] for r in settled} != {"posted"}:
        raise RuntimeError("a bench item was refused: the two definitions must be interchangeable")
    return held - started, done - held


async def run(dsn: str, a: Path, b: Path, items: int, rounds: int, history: int) -> dict[str, list[list[float]]]:
    await prepare(dsn, ORGS)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(function_sql(a, "ledger_batch_a"))
        await conn.execute(function_sql(b, "ledger_batch_b"))
        ids = itertools.count()
        for _ in range(history // 256):
            await pair(conn, BATCH_SQL, holds([f"org_b{i % ORGS}" for i in range(256)], ids))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn)  # a new session: no plan cached before the statistics
    found: dict[str, list[list[float]]] = {"a": [[], []], "b": [[], []]}
    try:
        for r in range(rounds):
            for v in ("a", "b") if r % 2 == 0 else ("b", "a"):
                sql = BATCH_SQL.replace("creditgate.ledger_batch(", f"creditgate.ledger_batch_{v}(")
                for call in range(21):
                    reserve, settle = await pair(conn, sql, holds(["org_b0"] * items, ids))  # one hot org
                    if r >= 2 and call > 0:  # the first rounds and calls warm caches and plans
                        found[v][0].append(reserve / items)
                        found[v][1].append(settle / items)
    finally:
        await conn.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the baseline's SQL file")
    parser.add_argument("b", type=Path, help="the candidate's SQL file")
    parser.add_argument("--items", type=int, default=1, help="reserves (then settles) per call")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--history", type=int, default=30_720, help="requests settled before measuring")
    args = parser.parse_args()
    pg = services.start_postgres(fsync=False)
    try:
        found = asyncio.run(run(services.create_database(pg.url, "bench_ledger_ab"), args.a, args.b, args.items,
                                args.rounds, args.history))
    finally:
        pg.stop()
    medians = {v: [statistics.median(x) * 1e6 for x in found[v]] for v in found}
    print(f"ledger_batch, {args.items} item(s) per call, {len(found['a'][0])} calls each, median µs per item")
    for v, path in (("a", args.a), ("b", args.b)):
        print(f"  {v} {str(path):<50} reserve {medians[v][0]:7.0f}  settle {medians[v][1]:7.0f}")
    print(f"  b / a                                                reserve {medians['b'][0] / medians['a'][0]:7.2f}"
          f"  settle {medians['b'][1] / medians['a'][1]:7.2f}")


if __name__ == "__main__":
    main()
