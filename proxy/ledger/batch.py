"""Group commit: concurrent reserves and settles go to PostgreSQL together, whatever their org.

A naive hold is one transaction on the org's pool row; every such transaction waits for the previous
one's commit to be flushed, so one hot org collapses to a few hundred requests per second
(research/ledger.md §4.2). Here a process has at most `flushers` (2) batch transactions in flight:
while they run, new items queue up, and the next `creditgate.ledger_batch(...)` call carries all of
them (up to `max_batch`) in one transaction, items sorted by org, with a result per item. Refusals
are results, not exceptions, so one refused reserve never fails its neighbours. The batch takes its
locks in the global order (holds, allocations sorted, pools sorted), so flushers of several replicas
never deadlock.

Failure handling:
- PostgreSQL unreachable / timed out: settles are retried once (idempotent by request id); reserves
  fail with `ledger_unavailable` (their outcome is unknown, so the caller voids them best effort).
- Any other database error (a bug, a violated constraint): the batch is re-run one item at a time so
  only the offending item fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from proxy.db.pool import UNAVAILABLE, Pool
from proxy.ledger.types import HoldRequest, Settlement
from proxy.tasks import Background

BATCH_SQL = """SELECT op, idx, status, amount, charged, remaining FROM creditgate.ledger_batch(
  $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23,
  $24, $25, $26, $27, $28)"""

SettleItem = tuple[str, str, Settlement]  # (org_id, request_id, settlement)
ReserveItem = tuple[HoldRequest, str]  # (request, owner nonce of this reserve call)


class IncompleteBatch(RuntimeError):
    """The batch committed but its answer is incomplete: never re-send its items (a bug in the SQL)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item's result from `ledger_batch` (status codes are listed in 0002_ledger.sql)."""

    status: str
    amount: int | None
    charged: int | None
    remaining: int | None


@dataclass(slots=True)
class _Item:
    org_id: str
    reserve: ReserveItem | None
    settle: SettleItem | None
    future: asyncio.Future[Outcome]
    attempts: int = 0


def batch_args(ttl: float, reserves: Sequence[ReserveItem], settles: Sequence[SettleItem]) -> list[Any]:
    """The 28 parallel-array arguments of `creditgate.ledger_batch`. Tags travel as one comma-joined string
    per reserve (PostgreSQL arrays must be rectangular; a tag never holds a comma)."""
    r, s = [x[0] for x in reserves], [x[2] for x in settles]
    return [
        ttl,
        [x.org_id for x in r], [x.request_id for x in r], [x.user_id for x in r], [x.key_id for x in r],
        [x.model for x in r], [x.byok for x in r], [x.amount for x in r], [x.prompt_tokens for x in r],
        [x.input_rate for x in r], [x.output_rate for x in r], [x.list_input_rate for x in r],
        [x.list_output_rate for x in r], [x[1] for x in reserves],
        [x[0] for x in settles], [x[1] for x in settles], [x.prompt_tokens for x in s],
        [x.completion_tokens for x in s], [x.charge for x in s], [x.list_price for x in s],
        [x.usage_source for x in s], [x.model for x in s], [x.provider for x in s], [x.deployment for x in s],
        [x.price_version for x in r], [x.end_user for x in r], [",".join(x.tags) for x in r],
        [x.power_level for x in r],
    ]


async def run_batch(pool: asyncpg.Pool, ttl: float, reserves: Sequence[ReserveItem],
                    settles: Sequence[SettleItem], timeout: float) -> tuple[list[Outcome], list[Outcome]]:
    """One `ledger_batch` call in one transaction; returns (reserve outcomes, settle outcomes) in the
    order given (items are sent sorted by org)."""
    r_order = sorted(range(len(reserves)), key=lambda i: reserves[i][0].org_id)
    s_order = sorted(range(len(settles)), key=lambda i: settles[i][0])
    args = batch_args(ttl, [reserves[i] for i in r_order], [settles[i] for i in s_order])
    async with pool.acquire(timeout=timeout) as conn:
        try:
            rows = await conn.fetch(BATCH_SQL, *args, timeout=timeout)
        except UNAVAILABLE:
            conn.terminate()  # never hand a connection in an unknown state back to the pool
            raise
    res: list[Outcome | None] = [None] * len(reserves)
    sets: list[Outcome | None] = [None] * len(settles)
    for row in rows:
        out = Outcome(row["status"], row["amount"], row["charged"], row["remaining"])
        if row["op"] == "reserve":
            res[r_order[row["idx"] - 1]] = out
        else:
            sets[s_order[row["idx"] - 1]] = out
    done_r, done_s = [o for o in res if o is not None], [o for o in sets if o is not None]
    if len(done_r) != len(reserves) or len(done_s) != len(settles):
        raise IncompleteBatch("ledger_batch committed but returned fewer results than items")
    return done_r, done_s


class GroupCommitter:
    """Queues reserves and settles; up to `flushers` tasks send them as batches."""

    def __init__(self, pool: Pool, ttl: float, *, timeout: float, max_batch: int = 256,
                 flushers: int = 2) -> None:
        self._pool = pool
        self._ttl = ttl
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_flushers = flushers
        self._items: list[_Item] = []
        self._flushers = Background()

    def submit_reserve(self, request: HoldRequest, owner: str) -> asyncio.Future[Outcome]:
        future = asyncio.get_running_loop().create_future()
        return self._submit(_Item(request.org_id, (request, owner), None, future))

    def submit_settle(self, org_id: str, request_id: str, settlement: Settlement) -> asyncio.Future[Outcome]:
        future = asyncio.get_running_loop().create_future()
        return self._submit(_Item(org_id, None, (org_id, request_id, settlement), future))

    def _submit(self, item: _Item) -> asyncio.Future[Outcome]:
        self._items.append(item)
        if len(self._flushers) < self._max_flushers:
            self._flushers.spawn(self._flush())
        return item.future

    async def close(self) -> None:
        """Wait for every queued item to be sent."""
        while self._flushers:
            await self._flushers.drain()

    async def _flush(self) -> None:
        while self._items:
            batch = self._items[: self._max_batch]
            del self._items[: self._max_batch]
            await self._send(batch)

    async def _send(self, batch: list[_Item]) -> None:
        reserves = [i for i in batch if i.reserve is not None]
        settles = [i for i in batch if i.settle is not None]
        try:
            res, sets = await run_batch(self._pool, self._ttl, [i.reserve for i in reserves if i.reserve],
                                        [i.settle for i in settles if i.settle], self._timeout)
        except UNAVAILABLE as exc:
            for item in reserves:
                _fail(item, exc)
            for item in settles:  # idempotent by request id: one more try
                item.attempts += 1
                if item.attempts < 2:
                    self._items.append(item)
                else:
                    _fail(item, exc)
            return
        except IncompleteBatch as exc:
            for item in batch:
                _fail(item, exc)
            return
        except Exception as exc:  # noqa: BLE001 - it rolled back: isolate the offending item
            if len(batch) == 1:
                _fail(batch[0], exc)
            else:
                for item in batch:
                    await self._send([item])
            return
        for item, out in zip(reserves, res, strict=True):
            _resolve(item, out)
        for item, out in zip(settles, sets, strict=True):
            _resolve(item, out)


def _resolve(item: _Item, out: Outcome) -> None:
    if not item.future.done():
        item.future.set_result(out)


def _fail(item: _Item, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
