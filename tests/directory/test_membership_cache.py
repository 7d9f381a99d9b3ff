"""The hot path's membership cache: one lookup per user per second, never stale beyond the TTL."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.directory.membership_cache import CachedMemberships
from proxy.directory.types import ApiKey, Membership, StoredProviderKey


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
