"""A directory whose membership lists are cached per user for a second.

ResolveOrg reads a user's memberships on every request; without a cache that SELECT costs about
250-300 µs of gateway CPU and 170 µs of PostgreSQL per request (bench.gateway_full --breakdown). A
second of staleness is safe for money: `reserve` re-reads the membership, its allocation and both
suspension flags inside its own transaction, so a removed or suspended member is refused there.

Concurrent misses for one user share one read (single flight): when an entry expires under load, the
requests in flight for that user would otherwise all read it at once (3-10% of the gateway's samples in a
profile under 64 slow streams of one member, bench/report.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from proxy.directory.types import ApiKey, Directory, Membership, StoredProviderKey

MAX_ENTRIES = 50_000


class CachedMemberships:
    """`Directory` that delegates everything and caches `memberships(user)` for `ttl_seconds`."""

    def __init__(self, directory: Directory, ttl_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._directory = directory
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, Sequence[Membership]]] = {}
        self._reading: dict[str, asyncio.Task[Sequence[Membership]]] = {}

    async def api_key(self, key_hash: str) -> ApiKey | None:
        return await self._directory.api_key(key_hash)

    async def memberships(self, user_id: str) -> Sequence[Membership]:
        now = self._clock()
        hit = self._entries.get(user_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        reading = self._reading.get(user_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read(user_id))
            self._reading[user_id] = reading
            reading.add_done_callback(lambda task: self._done(user_id, task))
        # shielded: a caller that goes away does not cancel the read the others wait for
        return await asyncio.shield(reading)

    def _done(self, user_id: str, task: asyncio.Task[Sequence[Membership]]) -> None:
        if self._reading.get(user_id) is task:
            del self._reading[user_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone

    async def _read(self, user_id: str) -> Sequence[Membership]:
        found = await self._directory.memberships(user_id)
        now = self._clock()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {u: e for u, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
        self._entries[user_id] = (now + self._ttl, found)
        return found

    async def provider_keys(self, org_id: str, user_id: str, provider: str) -> Sequence[StoredProviderKey]:
        return await self._directory.provider_keys(org_id, user_id, provider)
