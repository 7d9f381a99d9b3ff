"""The delivery loop: one per process, started and stopped by the app's lifespan (a `Part`).

With CREDITGATE_EXPORT_URL it turns the outbox on, then wakes on every NOTIFY from a settling transaction
(measured: the receiver has the event 14-23 ms after the settle), or every `poll_seconds` at the latest (a
lost listening connection is replaced at once; a database outage pauses the loop), claims a bounded batch
of due events (proxy/export/outbox.py: `FOR UPDATE SKIP LOCKED` plus a lease, so replicas share the work),
POSTs them with bounded concurrency and a timeout, and marks each one delivered, to retry with exponential
backoff and jitter, or dead (proxy/export/events.py `verdict`, or `max_attempts` reached). Delivered rows
are deleted `retention_seconds` after delivery; dead letters stay until an operator retries them.

Without an export URL it only keeps the metrics: budget alerts counted (each by exactly one replica) and the
outbox gauges. The URL and the secret are never logged: a failure is logged by its kind and status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from proxy.config.settings import Secret, Settings
from proxy.export.events import Event, backoff, body, headers, verdict
from proxy.export.outbox import Failure, PgOutbox
from proxy.ops.metrics import Metrics
from proxy.tasks import cancel, wait_event

log = logging.getLogger("creditgate.export")
CONCURRENCY = 8  # deliveries in flight per process
PRUNE_BATCH, PRUNE_ROUNDS = 1000, 10  # delivered rows past their retention deleted per housekeeping round


@dataclass(frozen=True, slots=True)
class ExportConfig:
    url: Secret | None
    secret: Secret | None = None
    timeout_seconds: float = 10.0
    max_attempts: int = 12
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 600.0
    batch: int = 100
    retention_seconds: float = 7 * 86400.0
    poll_seconds: float = 1.0
    housekeeping_seconds: float = 5.0  # gauges, alert counting, pruning

    @classmethod
    def of(cls, settings: Settings) -> ExportConfig:
        return cls(url=settings.export_url, secret=settings.export_secret,
                   timeout_seconds=settings.export_timeout_seconds, max_attempts=settings.export_max_attempts,
                   backoff_seconds=settings.export_backoff_seconds,
                   backoff_max_seconds=settings.export_backoff_max_seconds, batch=settings.export_batch,
                   retention_seconds=settings.export_retention_seconds)


class Exporter:
    def __init__(self, outbox: PgOutbox, metrics: Metrics, config: ExportConfig,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._outbox, self._metrics, self._config = outbox, metrics, config
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._enabled = False
        self._housekeeping_due = 0.0
        self._quiet_until = 0.0

    async def open(self) -> None:
        if self._config.url is not None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self._config.timeout_seconds),
                                             transport=self._transport, follow_redirects=False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="creditgate-export")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                if self._client is None:
                    await self._housekeeping()
                    await asyncio.sleep(self._config.housekeeping_seconds)
                    continue
                async with self._outbox.listen(self._wake.set) as listening:
                    while not listening.lost:  # a lost connection is listened again (a fresh one)
                        self._wake.clear()  # before the claim: a NOTIFY during it wakes the next wait at once
                        claimed = await self.run_once()
                        if claimed < self._config.batch:
                            await wait_event(self._wake, self._config.poll_seconds)
            except Exception as exc:  # noqa: BLE001 - the loop outlives a database outage
                if time.monotonic() >= self._quiet_until:  # one line a minute, not one a poll
                    self._quiet_until = time.monotonic() + 60.0
                    log.warning("export loop paused: %s", type(exc).__name__)
                await asyncio.sleep(min(self._config.poll_seconds, 1.0))

    async def run_once(self) -> int:
        """One cycle: the housekeeping when due, then one batch delivered; how many events it claimed."""
        if time.monotonic() >= self._housekeeping_due:
            await self._housekeeping()
        if self._client is None:
            return 0
        if not self._enabled:
            await self._outbox.enable()
            self._enabled = True
        events = await self._outbox.claim(self._config.batch, self._lease())
        if events:
            await self._settle(await self._post_all(events))
        return len(events)

    def _lease(self) -> float:
        return 2 * self._config.timeout_seconds + 30.0  # a claimed row is not due again before this

    async def _housekeeping(self) -> None:
        self._housekeeping_due = time.monotonic() + self._config.housekeeping_seconds
        for scope, threshold in await self._outbox.count_alerts():
            self._metrics.budget_alert(scope, threshold)
        for _ in range(PRUNE_ROUNDS):  # bounded: at most PRUNE_ROUNDS * PRUNE_BATCH rows per round
            if await self._outbox.prune(self._config.retention_seconds, PRUNE_BATCH) < PRUNE_BATCH:
                break
        self._metrics.set_export_depth(*await self._outbox.depth())

    async def _post_all(self, events: Sequence[Event]) -> list[tuple[Event, int | None, str]]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(event: Event) -> tuple[Event, int | None, str]:
            async with gate:
                return await self._post(event)

        return list(await asyncio.gather(*(one(e) for e in events)))

    async def _post(self, event: Event) -> tuple[Event, int | None, str]:
        """The receiver's status (None when it did not answer) and a short reason; the answer's body is
        never read."""
        assert self._client is not None and self._config.url is not None
        payload = body(event)
        sent = headers(event, payload, self._config.secret, int(time.time()))
        try:
            async with self._client.stream("POST", self._config.url.reveal(), content=payload, headers=sent) as r:
                return event, r.status_code, f"HTTP {r.status_code}"
        except httpx.TimeoutException:
            return event, None, "timeout"
        except httpx.HTTPError as exc:
            return event, None, type(exc).__name__

    async def _settle(self, results: Sequence[tuple[Event, int | None, str]]) -> None:
        delivered: list[tuple[Event, int]] = []
        failures: list[Failure] = []
        now = time.time()
        for event, status, reason in results:
            outcome = verdict(status)
            if outcome == "delivered" and status is not None:
                delivered.append((event, status))
                self._metrics.export_delay(max(now - event.occurred_at.timestamp(), 0.0))
                continue
            dead = outcome == "dead" or event.attempts >= self._config.max_attempts
            delay = backoff(event.attempts, self._config.backoff_seconds, self._config.backoff_max_seconds)
            failures.append(Failure(event.org_id, event.id, delay, status, reason, dead))
            if dead:
                log.warning("export event dead-lettered", extra={
                    "event_id": event.id, "transaction_id": event.transaction_id, "code": event.code,
                    "attempts": event.attempts, "reason": reason})
        await self._outbox.delivered(delivered)
        self._metrics.exported("delivered", len(delivered))  # counted once its write returned, not one more trip later
        await self._outbox.failed(failures)
        self._metrics.exported("dead_lettered", sum(f.dead for f in failures))
        self._metrics.exported("retried", sum(not f.dead for f in failures))
