"""The replay of the settlement spool (proxy/ledger/spool.py): settle what it holds once PostgreSQL answers.

**Replay rule** (idempotent by org and request id, `creditgate.ledger_batch` in
0005_grant_expiry.sql):
- the hold is still pending: posted (`posted`);
- the settle had committed before its connection broke: `already_settled` (the same charge);
- the hold expired during the outage and the sweeper settled it from its checkpoint (`checkpoint` /
  `prompt_only`, an estimate): the real usage replaces that estimate once, journaled as a `correction`
  (`late_posted`). The real usage wins; never a second charge;
- a real settlement with another charge (`conflict`), no hold at all (`not_found`: a failover that lost
  the reserve) or an entry the ledger refuses (`invalid`): it can never apply; logged with the whole
  entry, counted, dropped;
- a spooled void releases a pending hold. A void is spooled only for a request the contract does not
  charge (answered with an error, or never sent: its reserve's outcome was unknown), so a hold the
  sweeper settled first (an outage longer than the hold's TTL) has its estimate corrected to nothing,
  once, journaled as a `correction` (`late_posted`; the record keeps its model).

**Losing the spool's disk** loses no request silently: its hold stays pending in PostgreSQL and the
sweeper settles it at expiry (`hold_ttl_seconds` after its last checkpoint) from its last checkpoint or
its prompt (`checkpoint` / `prompt_only`): charged an estimate, never twice, never nothing.

**Where the spool lives.** `CREDITGATE_SPOOL_DIR` (default `creditgate-spool` in the working directory).
In the sidecar deployment mount a pod volume there: an `emptyDir` survives container restarts (the
restarted gateway adopts its predecessor's file at start and replays it) but not the pod's deletion
(then the sweeper's fallback above applies); a volume the replicas share lets any of them replay the
file of one that died.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from proxy.errors import ProxyError
from proxy.ledger.spool import Spool
from proxy.ledger.spool_entry import Entry
from proxy.ledger.types import Ledger, Settlement
from proxy.tasks import cancel, wait_event

log = logging.getLogger("creditgate.spool")

# what a request the gateway voided was charged: nothing (the correction keeps the swept record's model)
UNSERVED = Settlement(0, 0, 0, 0, "estimate", "", None, None)
OUTCOMES = frozenset({"posted", "late_posted", "already_settled", "voided", "conflict", "not_found", "invalid"})
_DROPPED = {"request_id_in_use": "conflict", "request_not_found": "not_found"}


class Replayer:
    """Settles what the spool holds once the ledger answers: a background task with backoff (`min_delay`
    doubling up to `max_delay` while the ledger is unavailable), adopting dead processes' files at start
    and every `scan_seconds`. `on_replayed(outcome, settlement)` counts each entry done (OUTCOMES).
    A Part: `close()` stops the task after one last pass of at most `final_seconds` (short: a SIGTERM drain
    has used most of Kubernetes' grace period by then, and what is left stays durable in the file)."""

    def __init__(self, spool: Spool, ledger: Ledger, *,
                 on_replayed: Callable[[str, Settlement | None], None] | None = None, batch: int = 128,
                 min_delay: float = 0.1, max_delay: float = 2.0, scan_seconds: float = 5.0,
                 final_seconds: float = 2.0) -> None:
        self._spool, self._ledger = spool, ledger
        self._on_replayed = on_replayed or (lambda outcome, settlement: None)
        self._batch, self._min_delay, self._max_delay = batch, min_delay, max_delay
        self._scan_seconds, self._final_seconds = scan_seconds, final_seconds
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="creditgate-spool-replay")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        if self._spool.pending():
            try:
                await asyncio.wait_for(self.replay_once(), self._final_seconds)
            except Exception as exc:  # noqa: BLE001 - what is left stays in the file for the next process
                log.warning("last spool replay incomplete: %s", type(exc).__name__)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay, next_scan = self._min_delay, 0.0
        while True:
            if loop.time() >= next_scan:
                next_scan = loop.time() + self._scan_seconds
                try:
                    await self._spool.adopt()
                except Exception:  # noqa: BLE001 - tried again at the next scan
                    log.exception("could not adopt spool files")
            try:
                blocked = await self.replay_once()
            except Exception:  # noqa: BLE001 - a bug must not end the replay of everything else
                log.exception("spool replay failed")
                blocked = True
            if blocked:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)
                continue
            delay = self._min_delay
            await wait_event(self._spool.changed, max(0.0, next_scan - loop.time()))
            self._spool.changed.clear()

    async def replay_once(self) -> bool:
        """Settle every entry waiting, `batch` at a time (they share the ledger's group commit); forget the
        ones done. True when the ledger was unavailable (what is left waits for the next pass)."""
        entries, done, blocked = self._spool.pending(), [], False
        for start in range(0, len(entries), self._batch):
            chunk = entries[start:start + self._batch]
            for entry, outcome in zip(chunk, await asyncio.gather(*(self._replay(e) for e in chunk)), strict=True):
                if outcome is None:
                    blocked = True
                else:
                    done.append(entry.key)
                    self._on_replayed(outcome, entry.settlement)
            if blocked:
                break
        if done:
            await self._spool.forget(done)
            log.info("replayed %d spooled settlement(s); %d waiting", len(done), len(self._spool.pending()))
        return blocked

    async def _replay(self, entry: Entry) -> str | None:
        """The entry's outcome, or None while the ledger cannot answer."""
        try:
            if entry.settlement is None:
                if await self._ledger.void(entry.org_id, entry.request_id) == "already_expired":
                    return (await self._ledger.settle(entry.org_id, entry.request_id, UNSERVED)).status
                return "voided"
            return (await self._ledger.settle(entry.org_id, entry.request_id, entry.settlement)).status
        except ProxyError as exc:
            outcome = _DROPPED.get(exc.code or "")
            if outcome is None:
                return None
        except ValueError:
            outcome = "invalid"
        except Exception as exc:  # noqa: BLE001 - kept and tried again: a settle is idempotent
            log.warning("spool replay of request %s failed: %s", entry.request_id, type(exc).__name__)
            return None
        log.error("spooled %s of request %s in org %s cannot be applied (%s); dropped: %s", entry.op,
                  entry.request_id, entry.org_id, outcome, entry.line.decode(errors="replace").strip())
        return outcome
