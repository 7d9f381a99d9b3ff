"""The hot path's membership cache: one lookup per user per second, never stale beyond the TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from proxy.directory.membership_cache import CachedMemberships
from proxy.directory.types import ApiKey, Membership, StoredProviderKey
from proxy.errors import ProxyError


class CountingDirectory:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.orgs: dict[str, list[Membership]] = {}

    async def api_key(self, key_hash: str) -> ApiKey | None:
        return None

    async def memberships(self, user_id: str) -> Sequence[Membership]:
        self.calls.append(user_id)
        return list(self.orgs.get(user_id, []))

    async def provider_keys(self, org_id: str, user_id: str, provider: str) -> Sequence[StoredProviderKey]:
        return []


def member(org: str) -> Membership:
    return Membership(org, "usr_a", "member", True, None, False, "starter", False)


async def test_memberships_are_cached_for_the_ttl_then_read_again() -> None:
    now = [100.0]
    inner = CountingDirectory()
    inner.orgs["usr_a"] = [member("org_1")]
    cache = CachedMemberships(inner, ttl_seconds=1.0, clock=lambda: now[0])
    assert [m.org_id for m in await cache.memberships("usr_a")] == ["org_1"]
    inner.orgs["usr_a"] = [member("org_1"), member("org_2")]
    now[0] += 0.99
    assert [m.org_id for m in await cache.memberships("usr_a")] == ["org_1"]
    now[0] += 0.02
    assert [m.org_id for m in await cache.memberships("usr_a")] == ["org_1", "org_2"]
    assert inner.calls == ["usr_a", "usr_a"]
    assert await cache.memberships("usr_b") == []
    assert inner.calls == ["usr_a", "usr_a", "usr_b"]


class SlowDirectory(CountingDirectory):
    """Each read waits for `release`, so concurrent misses overlap; `fail` makes the read raise."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.fail = False

    async def memberships(self, user_id: str) -> Sequence[Membership]:
        self.calls.append(user_id)
        await self.release.wait()
        if self.fail:
            raise ProxyError.ledger_unavailable()
        return list(self.orgs.get(user_id, []))


async def test_concurrent_misses_for_one_user_share_one_read() -> None:
    inner = SlowDirectory()
    inner.orgs["usr_a"] = [member("org_1")]
    cache = CachedMemberships(inner)
    waiters = [asyncio.ensure_future(cache.memberships("usr_a")) for _ in range(20)]
    other = asyncio.ensure_future(cache.memberships("usr_b"))
    await asyncio.sleep(0)
    waiters[0].cancel()  # a caller that leaves does not cancel the read the others share
    inner.release.set()
    results = await asyncio.gather(*waiters[1:])
    assert all([m.org_id for m in found] == ["org_1"] for found in results)
    assert await other == []
    assert sorted(inner.calls) == ["usr_a", "usr_b"]
    assert await cache.memberships("usr_a") == results[0] and len(inner.calls) == 2  # then cached


async def test_a_failed_shared_read_fails_every_waiter_and_is_not_cached() -> None:
    inner = SlowDirectory()
    inner.fail = True
    cache = CachedMemberships(inner)
    waiters = [asyncio.ensure_future(cache.memberships("usr_a")) for _ in range(3)]
    await asyncio.sleep(0)
    inner.release.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert [getattr(o, "code", None) for o in outcomes] == ["ledger_unavailable"] * 3 and inner.calls == ["usr_a"]
    inner.fail = False
    assert await cache.memberships("usr_a") == [] and inner.calls == ["usr_a", "usr_a"]
