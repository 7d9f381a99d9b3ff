"""`PgLedger`: the credit ledger on PostgreSQL, implementing `Ledger` (proxy/gateway/context.py) and
`LedgerAdmin` (proxy/api/stores.py).

Every money operation is one call of a PL/pgSQL function in `proxy/db/migrations/0002_ledger.sql` (as
amended by `0005_grant_expiry.sql`: expired grants forfeit what holds release later): one
transaction, one round trip, READ COMMITTED, conditional updates under the lock order
hold -> allocation -> pool. Reserves and settles are group-committed (`proxy/ledger/batch.py`): a
few batch transactions per process carry every org's items, so a hot org does not become a queue on
its pool row and a thousand quiet orgs do not each pay their own commit. PostgreSQL
unreachable or slower than the statement timeout (2 s) is `ProxyError.ledger_unavailable()`: fail
closed. Every method is cancellation-safe: once a reserve or settle is queued it completes even if
the caller is cancelled (a reserve whose caller went away is voided right after).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from proxy.db.pool import STATEMENT_TIMEOUT_MS, UNAVAILABLE, Pool, create_pool
from proxy.errors import ProxyError
from proxy.ledger.batch import GroupCommitter, Outcome, run_batch
from proxy.ledger.queries import LedgerQueries
from proxy.ledger.types import CHECKPOINT, ESTIMATE, PROMPT_ONLY, PROVIDER, Hold, HoldRequest, Settlement, SettleResult
from proxy.tasks import Background

log = logging.getLogger("creditgate.ledger")

USAGE_SOURCES = frozenset({PROVIDER, ESTIMATE, CHECKPOINT, PROMPT_ONLY})


class PgLedger(LedgerQueries):
    """The ledger. `batching=False` sends every reserve and settle as its own transaction (the naive
    design, kept for the benchmark and for comparison)."""

    def __init__(self, pool: Pool, *, hold_ttl_seconds: float, batching: bool = True,
                 max_batch: int = 256, flushers: int = 2,
                 on_lost_void: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        super().__init__(pool, STATEMENT_TIMEOUT_MS / 1000 + 1)
        self.hold_ttl_seconds = float(hold_ttl_seconds)
        self._batching = batching
        # reserves and settles of every org share `flushers` sessions; the rest of the pool serves the
        # single-statement operations (void, checkpoint, sweeps, admin reads)
        self._committer = GroupCommitter(pool, self.hold_ttl_seconds, timeout=self.timeout, max_batch=max_batch,
                                         flushers=flushers)
        self._background = Background()
        # where the void of an abandoned reserve goes when PostgreSQL cannot take it (the app hands it to the
        # spool, proxy/ledger/spool.py): a hold whose outcome the caller never learnt is released on replay
        # instead of being charged its prompt by the sweeper for a request that was answered 503
        self.on_lost_void = on_lost_void

    @classmethod
    async def connect(cls, dsn: str, *, hold_ttl_seconds: float, max_size: int = 8, batching: bool = True,
                      flushers: int = 2) -> PgLedger:
        """A ledger on its own asyncpg pool (see `create_pool`); `close()` closes both."""
        return cls(await create_pool(dsn, max_size=max_size), hold_ttl_seconds=hold_ttl_seconds, batching=batching,
                   flushers=flushers)

    async def close(self) -> None:
        """Send what is queued, finish background voids, close the pool."""
        await self._committer.close()
        await self._background.drain()
        await self.db.close()

    # ------------------------------------------------------------ hot path

    async def reserve(self, request: HoldRequest) -> Hold:
        """Hold `request.amount` against the org pool and the member's allocation at once."""
        _check_hold(request)
        owner = secrets.token_hex(8)  # lets a blind void release only the hold this call created
        try:
            out = await self._run(request.org_id, reserve=(request, owner))
        except ProxyError as exc:
            if exc.code == "ledger_unavailable":  # the outcome is unknown: make sure nothing stays held
                self._background.spawn(self._void_quietly(request.org_id, request.request_id, owner))
            raise
        if out.status == "held":
            return Hold(request.org_id, request.request_id, request.amount)
        raise _reserve_refusal(out.status, request)

    async def settle(self, org_id: str, request_id: str, settlement: Settlement) -> SettleResult:
        """Post min(charge, hold), release the rest, record any excess as overage and write the usage
        record, all in one transaction. Idempotent by request id; a late settle is accepted."""
        _check_settlement(settlement)
        out = await self._run(org_id, settle=(request_id, settlement))
        if out.status in ("posted", "late_posted", "already_settled"):
            return SettleResult(out.status, int(out.charged or 0), out.remaining)
        if out.status == "conflict":
            raise ProxyError(409, "conflict_error", "request_id_in_use",
                             f"Request '{request_id}' was already settled with a different charge.",
                             headers={"x-should-retry": "false"})
        raise ProxyError.not_found("request_not_found", f"No request '{request_id}' was admitted.")

    async def void(self, org_id: str, request_id: str) -> str:
        """Release a pending hold entirely (nothing was served). Idempotent; never voids a settled hold.
        Returns the hold's outcome (`Ledger.void`)."""
        return str(await self._call("SELECT creditgate.void_hold($1, $2)", org_id, request_id, retries=1))

    async def checkpoint(self, org_id: str, request_id: str, completion_tokens: int) -> None:
        """Renew the hold (expires_at = now + TTL) and record the tokens streamed so far."""
        await self._call("SELECT creditgate.checkpoint_hold($1, $2, $3, $4)", org_id, request_id,
                         max(0, completion_tokens), self.hold_ttl_seconds, retries=1)

    async def expire(self, limit: int = 500) -> tuple[int, int]:
        """One sweep: settle pending holds past their expiry, then expire due grants (what is available
        of them is forfeited now, what holds cover as those holds release it). Returns (holds expired,
        grants expired)."""
        holds = int(await self._call("SELECT creditgate.expire_holds($1)", limit, retries=0))
        grants = int(await self._call("SELECT creditgate.expire_grants($1)", limit, retries=0))
        return holds, grants

    async def open_holds(self) -> int:
        """Pending holds right now, over all orgs (the `holds open` gauge)."""
        return int(await self._call("SELECT count(*) FROM creditgate.holds WHERE state = 'pending'", retries=1))

    # ------------------------------------------------------------ plumbing

    async def _run(self, org_id: str, *, reserve: tuple[HoldRequest, str] | None = None,
                   settle: tuple[str, Settlement] | None = None) -> Outcome:
        future: asyncio.Future[Outcome]
        if not self._batching:
            future = self._background.spawn(self._run_alone(org_id, reserve, settle))
        elif reserve is not None:
            future = self._committer.submit_reserve(*reserve)
        else:
            assert settle is not None
            future = self._committer.submit_settle(org_id, *settle)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if reserve is not None:  # the caller went away: release whatever the queued reserve holds
                future.add_done_callback(lambda f: self._after_abandoned_reserve(f, reserve))
            raise
        except UNAVAILABLE as exc:
            raise ProxyError.ledger_unavailable() from exc

    async def _run_alone(self, org_id: str, reserve: tuple[HoldRequest, str] | None,
                         settle: tuple[str, Settlement] | None) -> Outcome:
        res, sets = await run_batch(self.db, self.hold_ttl_seconds, [reserve] if reserve else [],
                                    [(org_id, *settle)] if settle else [], self.timeout)
        return (res or sets)[0]

    def _after_abandoned_reserve(self, future: asyncio.Future[Outcome], reserve: tuple[HoldRequest, str]) -> None:
        if future.cancelled() or future.exception() is not None or future.result().status == "held":
            self._background.spawn(self._void_quietly(reserve[0].org_id, reserve[0].request_id, reserve[1]))

    async def _void_quietly(self, org_id: str, request_id: str, owner: str) -> None:
        try:
            await self._call("SELECT creditgate.void_hold($1, $2, $3)", org_id, request_id, owner, retries=2)
        except ProxyError:
            if self.on_lost_void is not None:
                try:
                    await self.on_lost_void(org_id, request_id)
                    log.warning("could not void an abandoned hold now; its void is spooled for replay")
                    return
                except Exception as exc:  # noqa: BLE001 - the sweeper's fallback remains
                    log.error("could not spool the void of an abandoned hold: %s", type(exc).__name__)
            log.warning("could not void an abandoned hold; the sweeper will settle it")



def _check_hold(r: HoldRequest) -> None:
    if r.amount < 0 or r.prompt_tokens < 0 or min(r.input_rate, r.output_rate, r.list_input_rate,
                                                   r.list_output_rate) < 0:
        raise ValueError("a hold's amount, prompt tokens and rates must be non-negative")
    if not r.request_id or not r.org_id or not r.user_id:
        raise ValueError("a hold needs an org, a user and a request id")


def _check_settlement(s: Settlement) -> None:
    if min(s.charge, s.list_price, s.prompt_tokens, s.completion_tokens) < 0:
        raise ValueError("a settlement's charge, list price and token counts must be non-negative")
    if s.usage_source not in USAGE_SOURCES:
        raise ValueError(f"unknown usage_source {s.usage_source!r}")


def _reserve_refusal(status: str, r: HoldRequest) -> ProxyError:
    if status == "request_id_in_use":
        return ProxyError.request_id_in_use(r.request_id)
    if status == "org_pool_exhausted":
        return ProxyError.insufficient_credits(
            status, f"The organization's credit pool cannot cover this request ({r.amount} millicredits held).")
    if status == "user_allocation_exhausted":
        return ProxyError.insufficient_credits(
            status, f"Your allocation in this organization cannot cover this request ({r.amount} millicredits held).")
    if status == "key_limit_exhausted":
        return ProxyError.insufficient_credits(
            status, f"This API key's own spend limit cannot cover this request ({r.amount} millicredits held).")
    if status == "suspended":
        return ProxyError.permission("suspended", "This organization or membership is suspended.")
    return ProxyError.permission("not_a_member", "You are not a member of this organization.")
