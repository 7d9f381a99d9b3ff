"""Worker side of the concurrency hammer (run in separate OS processes by test_hammer.py).

Each worker process opens its own `PgLedger` (group commit on) and runs many coroutines against one
org. Results go back to the parent as plain dicts, so the parent can compare what clients observed
with what the database holds.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from proxy.ledger.sweeper import Sweeper
from tests.ledger.conftest import hold, usage

ORG = "org_hammer"
ORG_KILLS = "org_hammer_k"  # admission while backends are being killed
OTHER_ORGS = ("org_hammer_b", "org_hammer_c", "org_hammer_d")  # batches mix orgs: lock order across pools
USERS = ("usr_h1", "usr_h2", "usr_h3", "usr_h4")


def admission(args: tuple[str, int, int, int, int, str, str]) -> dict[str, Any]:
    """Race `attempts` reserves of `amount` on `org` (the same ids from every process: duplicates race
    across processes). Outcomes: held, refused (402), in_use (409), unknown (503: a killed backend)."""
    return asyncio.run(_admission(*args))


async def _admission(dsn: str, proc: int, attempts: int, amount: int, coroutines: int, org: str, prefix: str
                     ) -> dict[str, Any]:
    ledger = await PgLedger.connect(dsn, hold_ttl_seconds=120, max_size=4)
    out: dict[str, Any] = {"held": [], "refused": 0, "in_use": 0, "unknown": []}
    queue = list(range(attempts))

    async def one(i: int) -> None:
        rid = f"{prefix}-{i}"
        try:
            await ledger.reserve(hold(org, USERS[i % len(USERS)], rid, amount))
            out["held"].append(rid)
        except ProxyError as exc:
            if exc.code == "org_pool_exhausted":
                out["refused"] += 1
            elif exc.code == "request_id_in_use":
                out["in_use"] += 1
            elif exc.code == "ledger_unavailable":
                out["unknown"].append(rid)  # voided by its owner nonce, best effort
            else:
                raise

    async def worker() -> None:
        while queue:
            await one(queue.pop(random.randrange(len(queue))))

    await asyncio.gather(*(worker() for _ in range(coroutines)))
    await ledger.close()
    return out


def chaos(args: tuple[str, int, float, list[str], int]) -> dict[str, Any]:
    """Phase 2: settle phase 1's holds, then reserve/settle/void/abandon new ones while backends die."""
    return asyncio.run(_chaos(*args))


async def _chaos(dsn: str, proc: int, seconds: float, inherited: list[str], seed: int) -> dict[str, Any]:
    rng = random.Random(seed * 1000 + proc)
    ledger = await PgLedger.connect(dsn, hold_ttl_seconds=1.0, max_size=4)
    sweeper = Sweeper(ledger, 0.2)
    sweeper.start()
    log: dict[str, Any] = {"settled": {}, "held": {}, "voided": [], "abandoned": [], "unknown": [], "cancelled": [],
                           "refused": 0, "late": 0}
    deadline = asyncio.get_running_loop().time() + seconds

    async def retry(make: Any) -> Any:
        for _ in range(200):
            try:
                return await make()
            except ProxyError as exc:
                if exc.code != "ledger_unavailable":
                    raise
                await asyncio.sleep(0.02)
        raise RuntimeError("ledger unavailable for too long")

    async def settle(org: str, rid: str, charge: int) -> None:
        res = await retry(lambda: ledger.settle(org, rid, usage(charge)))
        assert res.charged == charge, (rid, res)
        log["settled"][rid] = charge

    async def lifecycle(n: int) -> None:
        rid, amount = f"chaos-{proc}-{n}", rng.randint(10, 400)
        user, org = rng.choice(USERS), ORG if rng.random() < 0.6 else rng.choice(OTHER_ORGS)
        if rng.random() < 0.05:  # the client goes away while the reserve is queued
            task = asyncio.ensure_future(ledger.reserve(hold(org, user, rid, amount)))
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            log["cancelled"].append(rid)
            return
        try:
            await ledger.reserve(hold(org, user, rid, amount))
        except ProxyError as exc:
            if exc.code == "ledger_unavailable":
                log["unknown"].append(rid)  # voided best effort, else left to the sweeper
            elif exc.code in ("org_pool_exhausted", "user_allocation_exhausted"):
                log["refused"] += 1
            else:
                raise
            return
        log["held"][rid] = (org, amount)
        if rng.random() < 0.1:  # a duplicate reserve racing the request itself
            dup = await asyncio.gather(ledger.reserve(hold(org, user, rid, amount)), return_exceptions=True)
            assert isinstance(dup[0], ProxyError) and dup[0].code in ("request_id_in_use", "ledger_unavailable")
        await asyncio.sleep(rng.uniform(0, 0.01))  # "the upstream call"
        r, charge = rng.random(), int(amount * rng.choice([0, 0.3, 1, 1.2]))
        if r < 0.10:
            outcome = await retry(lambda: ledger.void(org, rid))
            assert outcome in ("voided", "already_voided", "already_expired"), (rid, outcome)
            # a hold that outlived its 1 s TTL on the way (a slow batch, a killed backend) was the sweeper's
            log["abandoned" if outcome == "already_expired" else "voided"].append(rid)
        elif r < 0.15:
            log["abandoned"].append(rid)  # the replica "died": the sweeper settles it from the prompt
        elif r < 0.20:  # late: the real usage arrives after the sweeper settled the hold
            await asyncio.sleep(1.6)
            await settle(org, rid, charge)
            log["late"] += 1
        elif r < 0.30:  # the settle is cancelled mid-flight, then re-driven
            settling = asyncio.ensure_future(ledger.settle(org, rid, usage(charge)))
            await asyncio.sleep(rng.uniform(0, 0.003))
            settling.cancel()
            await asyncio.gather(settling, return_exceptions=True)
            await settle(org, rid, charge)
        elif r < 0.40:  # duplicate settles racing
            await asyncio.gather(settle(org, rid, charge), settle(org, rid, charge))
        else:
            await settle(org, rid, charge)

    async def worker(w: int) -> None:
        n = 0
        while asyncio.get_running_loop().time() < deadline:
            await lifecycle(w * 1_000_000 + n)
            n += 1

    await asyncio.gather(*(settle(ORG, rid, 700) for rid in inherited))
    await asyncio.gather(*(worker(w) for w in range(16)))
    await sweeper.stop()
    await ledger.close()
    return log
