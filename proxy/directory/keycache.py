"""API keys by SHA-256 hash, cached in-process, with revocation on every replica within one second.

`KeyCache.get(key_hash)` answers from the cache only while the revocation subscription is healthy:
subscribed to `creditgate:revocations` on Redis and answering a ping within the last
`HEALTH_WINDOW` seconds. Otherwise every lookup goes to PostgreSQL through `Directory.api_key`
(CONTRACT.md: with Redis down, keys are looked up in PostgreSQL). The cache is emptied whenever the
subscription is lost or re-established, because revocations published in between were missed.

`revoke(key_hash)` drops the entry here and publishes the hash; every replica's subscriber drops it
too. A lookup that fails (PostgreSQL unreachable) is 503 `ledger_unavailable`: never "allowed".
The subscriber runs as a task between `start()` and `stop()` (the app's lifespan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.config.settings import Secret
from proxy.directory.types import ApiKey, Directory
from proxy.errors import ProxyError

CHANNEL = "creditgate:revocations"
PING_EVERY = 0.25  # seconds between health pings on the subscription
HEALTH_WINDOW = 0.75  # no pong for this long: stop trusting the cache (well inside the 1 s promise)
RECONNECT_AFTER = 3.0  # no pong for this long: drop the connection and subscribe again

log = logging.getLogger("creditgate.keycache")


@dataclass(frozen=True, slots=True)
class _Entry:
    key: ApiKey
    expires: float


class BroadcastFailed(Exception):
    """A key revocation could not be published to the other replicas."""


class KeyCache:
    def __init__(
        self,
        directory: Directory,
        redis_url: Secret,
        *,
        ttl_seconds: float = 60.0,
        channel: str = CHANNEL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._directory = directory
        self._url = redis_url
        self._ttl = ttl_seconds
        self._channel = channel
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._entries: dict[str, _Entry] = {}
        self._generation = 0  # bumped by every invalidation: a lookup racing one is not cached
        self._subscribed = False
        self._last_pong = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._publisher: Redis | None = None

    @property
    def healthy(self) -> bool:
        """True while revocations are known to reach this replica."""
        return self._subscribed and self._clock() - self._last_pong < HEALTH_WINDOW

    async def get(self, key_hash: str) -> ApiKey | None:
        """The stored key for `key_hash`, or None. Raises 503 `ledger_unavailable` when undecidable."""
        now = self._clock()
        entry = self._entries.get(key_hash)
        if entry is not None and entry.expires > now and self.healthy:
            return entry.key
        generation, trusted = self._generation, self.healthy
        try:
            key = await self._directory.api_key(key_hash)
        except ProxyError:
            raise
        except Exception as exc:  # fail closed: any failure to look the key up refuses the request
            log.error("api key lookup failed: %s", type(exc).__name__)
            raise ProxyError.ledger_unavailable() from None
        # unknown keys are not cached (a key created a moment later must work at once)
        if key is not None and trusted and self.healthy and generation == self._generation:
            self._entries[key_hash] = _Entry(key, now + self._ttl)
        return key

    def invalidate(self, key_hash: str) -> None:
        self._generation += 1
        self._entries.pop(key_hash, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    async def revoke(self, key_hash: str) -> None:
        """Invalidate here and tell every replica. Raises `BroadcastFailed` when Redis could not be told:
        the revocation is stored, so the other replicas refuse the key once their cache entry (one second)
        expires or, with their subscription down too, at once (they read PostgreSQL on every request); the
        admin API answers 503 so the caller retries and the broadcast is sent again."""
        self.invalidate(key_hash)
        if self._publisher is None:
            self._publisher = Redis.from_url(self._url.reveal(), socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            await self._publisher.publish(self._channel, key_hash)
        except Exception as exc:
            log.error("could not publish a key revocation: %s", type(exc).__name__)
            raise BroadcastFailed(type(exc).__name__) from None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._subscribe_forever(), name="keycache-revocations")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None
        self._subscribed = False
        self.clear()

    async def _subscribe_forever(self) -> None:
        backoff, lost = 0.05, False
        while True:
            try:
                await self._subscribe_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any loss of the subscription: distrust the cache, reconnect
                if not lost or self._subscribed:  # once per loss, not at every retry while Redis is down
                    log.warning("revocation subscription lost, keys are read from PostgreSQL until it is back: %s",
                                type(exc).__name__)
                lost = True
            finally:
                self._subscribed = False
                self.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _subscribe_once(self) -> None:
        # no client-side retries: a silent reconnect would hide revocations published in the gap
        client = Redis.from_url(
            self._url.reveal(), retry=Retry(NoBackoff(), 0), socket_connect_timeout=1.0, socket_keepalive=True
        )
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            last_ping = float("-inf")
            while True:
                now = self._clock()
                if now - last_ping >= PING_EVERY:
                    await pubsub.ping()
                    last_ping = now
                # Redis answers on one connection in order: a pong means every revocation published
                # before our ping has been read, so a fresh pong is what makes the cache trustworthy
                if self._subscribed and now - self._last_pong >= RECONNECT_AFTER:
                    raise TimeoutError("no pong on the revocation subscription")
                message = await pubsub.get_message(timeout=PING_EVERY / 2)
                if message is not None:
                    self._handle(message)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    def _handle(self, message: dict[str, object]) -> None:
        kind, data = message.get("type"), message.get("data")
        if kind == "message" and isinstance(data, bytes):
            self.invalidate(data.decode(errors="replace"))
        elif kind == "subscribe":
            self.clear()  # anything cached before this subscription may have missed a revocation
            self._last_pong = self._clock()
            self._subscribed = True
            log.info("revocation subscription established")
        elif kind == "pong":
            self._last_pong = self._clock()
