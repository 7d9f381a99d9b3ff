"""KeyCache through a real Redis: revocation reaches another replica within one second, and with
Redis down every lookup goes to the directory (PostgreSQL) instead of the cache."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from devstack import services
from proxy.config.settings import Secret
from proxy.directory.keycache import BroadcastFailed, KeyCache
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError
from tests.policies.policy_support import FakeDirectory
from tests.waiting import until

HASH = "a" * 64
KEY = ApiKey("key_1", "usr_1", None, False)


@pytest.fixture
async def replicas(redis_server: services.Service) -> AsyncIterator[tuple[FakeDirectory, KeyCache, KeyCache]]:
    directory = FakeDirectory()
    directory.keys[HASH] = KEY
    channel = f"test:revocations:{time.monotonic_ns()}"
    a = KeyCache(directory, Secret(redis_server.url), channel=channel)
    b = KeyCache(directory, Secret(redis_server.url), channel=channel)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.healthy and b.healthy)
        yield directory, a, b
    finally:
        await a.stop()
        await b.stop()


async def test_revocation_reaches_the_other_replica_within_a_second(
    replicas: tuple[FakeDirectory, KeyCache, KeyCache],
) -> None:
    directory, a, b = replicas
    assert await a.get(HASH) == KEY and await b.get(HASH) == KEY
    assert directory.key_lookups == 2
    assert await a.get(HASH) == KEY and await b.get(HASH) == KEY
    assert directory.key_lookups == 2  # both answered from their caches

    directory.keys[HASH] = ApiKey("key_1", "usr_1", None, True)  # what DELETE /admin/keys/{id} writes
    started = time.monotonic()
    await a.revoke(HASH)
    assert (await a.get(HASH)) == ApiKey("key_1", "usr_1", None, True)  # at once on the revoking replica
    while (seen := await b.get(HASH)) is None or not seen.revoked:
        assert time.monotonic() - started < 1.0, "revocation took more than a second to reach replica b"
        await asyncio.sleep(0.005)


async def test_unknown_keys_are_not_cached(replicas: tuple[FakeDirectory, KeyCache, KeyCache]) -> None:
    directory, a, _ = replicas
    assert await a.get("b" * 64) is None
    directory.keys["b" * 64] = KEY  # a key created a moment later works at once
    assert await a.get("b" * 64) == KEY


async def test_redis_down_means_every_lookup_reads_postgres(caplog: pytest.LogCaptureFixture) -> None:
    """...and the log says so once when the subscription is lost and once when it is back, not at every retry."""
    caplog.set_level(logging.INFO, logger="creditgate.keycache")
    redis = services.start_redis()
    directory = FakeDirectory()
    directory.keys[HASH] = KEY
    cache = KeyCache(directory, Secret(redis.url))
    try:
        await cache.start()
        await until(lambda: cache.healthy)
        await cache.get(HASH)
        await cache.get(HASH)
        assert directory.key_lookups == 1

        redis.stop()
        assert await until(lambda: not cache.healthy) < 1.0
        for expected_lookups in (2, 3, 4):
            assert await cache.get(HASH) == KEY
            assert directory.key_lookups == expected_lookups
        with pytest.raises(BroadcastFailed):  # nobody to tell: the admin API answers 503, the DELETE is retried
            await cache.revoke(HASH)

        redis = services.start_redis(port=redis.port)
        await until(lambda: cache.healthy, 10)
        await cache.get(HASH)
        await cache.get(HASH)
        assert directory.key_lookups == 5  # trusted again once resubscribed
    finally:
        await cache.stop()
        redis.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "creditgate.keycache"]
    assert messages[0] == "revocation subscription established" and messages[-1] == messages[0]
    lost = [m for m in messages if m.startswith("revocation subscription lost")]
    assert len(lost) == 1 and lost[0].startswith("revocation subscription lost, keys are read from PostgreSQL")
    assert messages.count("revocation subscription established") == 2


async def test_postgres_unreachable_fails_closed(redis_server: services.Service) -> None:
    directory = FakeDirectory()
    directory.fail = ConnectionRefusedError("postgres down")
    cache = KeyCache(directory, Secret(redis_server.url))
    with pytest.raises(ProxyError) as info:
        await cache.get(HASH)
    assert (info.value.status, info.value.code) == (503, "ledger_unavailable")


class SlowDirectory(FakeDirectory):
    """A lookup that takes a while, so a revocation can arrive while it is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def api_key(self, key_hash: str) -> ApiKey | None:
        self.entered.set()
        await self.release.wait()
        return await super().api_key(key_hash)


async def test_a_lookup_racing_a_revocation_is_not_cached(redis_server: services.Service) -> None:
    directory = SlowDirectory()
    directory.keys[HASH] = KEY
    cache = KeyCache(directory, Secret(redis_server.url), channel=f"test:race:{time.monotonic_ns()}")
    await cache.start()
    try:
        await until(lambda: cache.healthy)
        lookup = asyncio.create_task(cache.get(HASH))
        await directory.entered.wait()
        await cache.revoke(HASH)  # arrives while the stale row is being read
        directory.release.set()
        assert await lookup == KEY  # that one answer was already decided
        directory.keys[HASH] = ApiKey("key_1", "usr_1", None, True)
        assert await cache.get(HASH) == ApiKey("key_1", "usr_1", None, True)  # not served from the cache
    finally:
        await cache.stop()
