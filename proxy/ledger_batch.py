"""Group commit per org pool: concurrent reserves and settles of one org go to PostgreSQL together.

A naive hold is one transaction on the org's pool row; every such transaction waits for the previous
one's commit to be flushed, so one hot org collapses to a few hundred requests per second
(research/ledger.md §4.2). Here each org has at most one flusher task per process: while one batch is
in flight, new items queue up, and the next `creditgate.ledger_batch(...)` call carries all of them in
one transaction (settles first, then reserves), with a result per item. Refusals are results, not
exceptions, so one refused reserve never fails its neighbours.

Failure handling:
- PostgreSQL unreachable / timed out: settles are retried once (idempotent by request id); reserves
  fail with `ledger_unavailable` (their outcome is unknown, so the caller voids them best effort).
- Any other database error (a bug, a violated constraint): the batch is re-run one item at a time so
  only the offending item fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from proxy.context import HoldRequest, Settlement

# Errors meaning "the ledger is unavailable": connection lost or refused, timeouts, shutdown,
# statement_timeout (QueryCanceled), deadlock/serialization (never expected; retryable).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # after pg_terminate_backend a pooled connection can surface as InternalClientError
    # ("cannot switch to state ..."; MagicStack/asyncpg#1069): a disconnect, not a bug of ours
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
)

BATCH_SQL = """SELECT op, idx, status, amount, charged, remaining FROM creditgate.ledger_batch(
  $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item's result from `ledger_batch` (status codes are listed in 0002_ledger.sql)."""

    status: str
    amount: int | None
    charged: int | None
    remaining: int | None


@dataclass(slots=True)
class _Item:
    reserve: HoldRequest | None
    settle: tuple[str, Settlement] | None  # (request_id, settlement)
    future: asyncio.Future[Outcome]
    attempts: int = 0


@dataclass(slots=True)
class _Queue:
    items: list[_Item] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None


def batch_args(org_id: str, ttl: float, reserves: Sequence[HoldRequest], settles: Sequence[tuple[str, Settlement]]
               ) -> list[Any]:
    """The 22 parallel-array arguments of `creditgate.ledger_batch`."""
    r, s = reserves, [x[1] for x in settles]
    return [
        org_id, ttl,
        [x.request_id for x in r], [x.user_id for x in r], [x.key_id for x in r], [x.model for x in r],
        [x.byok for x in r], [x.amount for x in r], [x.prompt_tokens for x in r], [x.input_rate for x in r],
        [x.output_rate for x in r], [x.list_input_rate for x in r], [x.list_output_rate for x in r],
        [x[0] for x in settles], [x.prompt_tokens for x in s], [x.completion_tokens for x in s],
        [x.charge for x in s], [x.list_price for x in s], [x.usage_source for x in s], [x.model for x in s],
        [x.provider for x in s], [x.deployment for x in s],
    ]


async def run_batch(pool: asyncpg.Pool, org_id: str, ttl: float, reserves: Sequence[HoldRequest],
                    settles: Sequence[tuple[str, Settlement]], timeout: float) -> tuple[list[Outcome], list[Outcome]]:
    """One `ledger_batch` call in one transaction; returns (reserve outcomes, settle outcomes) in order."""
    async with pool.acquire(timeout=timeout) as conn:
        try:
            rows = await conn.fetch(BATCH_SQL, *batch_args(org_id, ttl, reserves, settles), timeout=timeout)
        except UNAVAILABLE:
            conn.terminate()  # never hand a connection in an unknown state back to the pool
            raise
    res: list[Outcome | None] = [None] * len(reserves)
    sets: list[Outcome | None] = [None] * len(settles)
    for row in rows:
        out = Outcome(row["status"], row["amount"], row["charged"], row["remaining"])
        (res if row["op"] == "reserve" else sets)[row["idx"] - 1] = out
    if any(o is None for o in res) or any(o is None for o in sets):
        raise RuntimeError("ledger_batch returned fewer results than items")
    return [o for o in res if o is not None], [o for o in sets if o is not None]


class GroupCommitter:
    """Queues reserves and settles per org; one flusher per org sends them as one batch."""

    def __init__(self, pool: asyncpg.Pool, ttl: float, *, timeout: float, max_batch: int = 256) -> None:
        self._pool = pool
        self._ttl = ttl
        self._timeout = timeout
        self._max_batch = max_batch
        self._queues: dict[str, _Queue] = {}

    def submit_reserve(self, request: HoldRequest) -> asyncio.Future[Outcome]:
        return self._submit(request.org_id, _Item(request, None, asyncio.get_running_loop().create_future()))

    def submit_settle(self, org_id: str, request_id: str, settlement: Settlement) -> asyncio.Future[Outcome]:
        item = _Item(None, (request_id, settlement), asyncio.get_running_loop().create_future())
        return self._submit(org_id, item)

    def _submit(self, org_id: str, item: _Item) -> asyncio.Future[Outcome]:
        queue = self._queues.setdefault(org_id, _Queue())
        queue.items.append(item)
        if queue.flusher is None:
            queue.flusher = asyncio.get_running_loop().create_task(self._flush(org_id, queue))
        return item.future

    async def close(self) -> None:
        """Wait for every queued item to be sent."""
        while self._queues:
            flushers = [q.flusher for q in self._queues.values() if q.flusher is not None]
            await asyncio.gather(*flushers, return_exceptions=True)

    async def _flush(self, org_id: str, queue: _Queue) -> None:
        try:
            while queue.items:
                batch = queue.items[: self._max_batch]
                del queue.items[: self._max_batch]
                await self._send(org_id, batch, queue)
        finally:
            queue.flusher = None
            if not queue.items:
                self._queues.pop(org_id, None)
            else:  # only after a cancellation: hand the rest to a new flusher
                queue.flusher = asyncio.get_running_loop().create_task(self._flush(org_id, queue))

    async def _send(self, org_id: str, batch: list[_Item], queue: _Queue) -> None:
        reserves = [i for i in batch if i.reserve is not None]
        settles = [i for i in batch if i.settle is not None]
        try:
            res, sets = await run_batch(self._pool, org_id, self._ttl, [i.reserve for i in reserves if i.reserve],
                                        [i.settle for i in settles if i.settle], self._timeout)
        except UNAVAILABLE as exc:
            for item in reserves:
                _fail(item, exc)
            for item in settles:  # idempotent by request id: one more try
                item.attempts += 1
                if item.attempts < 2:
                    queue.items.append(item)
                else:
                    _fail(item, exc)
            return
        except Exception as exc:  # noqa: BLE001 - isolate the offending item
            if len(batch) == 1:
                _fail(batch[0], exc)
            else:
                for item in batch:
                    await self._send(org_id, [item], queue)
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
