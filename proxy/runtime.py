"""What the full gateway holds open while it runs, built in the app's lifespan and closed after it.

PostgreSQL (the ledger and the directory), Redis (key revocations, rate limits), the sweeper, the policy chain and
the routes that need them. Static configuration (the policy file, the model catalogue) is loaded
before, at start-up, so a mistake stops the process with one line per problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from starlette.datastructures import State
from starlette.routing import BaseRoute, Router

from policies import default_policies
from policies.auth import Authenticate
from policies.org import ResolveOrg
from policies.ratelimit import redis_client as rate_limit_redis
from proxy.admin import admin_routes
from proxy.caller import caller_routes
from proxy.caller_common import identify_with
from proxy.caller_probe import litellm_probe
from proxy.context import Policy
from proxy.crypto import KeyBox
from proxy.directory import PgDirectory
from proxy.keycache import KeyCache
from proxy.ledger import PgLedger
from proxy.membership_cache import CachedMemberships
from proxy.metrics import Metrics
from proxy.openapi import openapi_routes
from proxy.policy_config import PolicyConfig, load_policy
from proxy.pricing import Catalogue, check_policy, load_catalogue
from proxy.settings import Settings
from proxy.sweeper import Sweeper
from proxy.tokens import TokenCounter
from proxy.upstream import Upstream

log = logging.getLogger("creditgate.runtime")
RATE_LIMIT_TIMEOUT = 0.1  # seconds


@dataclass
class Runtime:
    ledger: PgLedger
    directory: PgDirectory
    keys: KeyCache
    sweeper: Sweeper
    limits: aioredis.Redis  # the rate limits' client (short timeouts, no retries); also the readiness ping
    policies: tuple[Policy, ...]
    routes: list[BaseRoute]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sweeper.stop()
        await self.keys.stop()
        await self.limits.aclose()
        await self.ledger.close()


def load_config(settings: Settings) -> tuple[PolicyConfig, Catalogue]:
    """The policy file and the model list, checked against each other; `ConfigError` lists every mistake."""
    policy = load_policy(settings.policy_config)
    catalogue = load_catalogue(settings.litellm_config)
    check_policy(policy, catalogue)
    return policy, catalogue


class Product:
    """The full gateway around the core app: `create_app()` enters `resource` in its lifespan, takes the
    chain from `policies`, and its router receives the caller and admin routes at start-up (they need the
    database pool, which only exists inside the lifespan)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy, self.catalogue = load_config(settings)
        self.router: Router | None = None
        self.runtime: Runtime | None = None

    @asynccontextmanager
    async def resource(self, state: State) -> AsyncIterator[None]:
        runtime = await open_runtime(self.settings, self.policy, self.catalogue, state.upstream, state.metrics)
        self.runtime = runtime
        assert self.router is not None, "create_app attaches the router"
        self.router.routes[0:0] = runtime.routes
        try:
            yield
        finally:
            await runtime.close()

    def policies(self, _: State) -> tuple[Policy, ...]:
        assert self.runtime is not None
        return self.runtime.policies

    async def postgres(self) -> None:
        assert self.runtime is not None
        await self.runtime.ledger.db.fetchval("SELECT 1")

    async def redis(self) -> str:
        """Redis down degrades (no revocation broadcast, keys read from PostgreSQL), it never stops billing."""
        assert self.runtime is not None
        try:
            await self.runtime.limits.ping()
        except Exception:  # noqa: BLE001 - reported as degraded, logged by the key cache
            return "degraded"
        return "ok"


async def open_runtime(settings: Settings, policy: PolicyConfig, catalogue: Catalogue, upstream: Upstream,
                       metrics: Metrics) -> Runtime:
    ledger = await PgLedger.connect(settings.database_url.reveal(), hold_ttl_seconds=float(policy.hold_ttl_seconds),
                                    max_size=16)
    directory = PgDirectory(ledger.db)
    keys = KeyCache(directory, settings.redis_url)
    await keys.start()
    keybox = KeyBox(settings.byok_keys)
    counter = TokenCounter()
    await asyncio.to_thread(counter.warm)  # load the encoding now, not on the first request
    # a slow or absent Redis delays a request by ~100 ms at most before its rate limit is skipped
    limits = rate_limit_redis(settings.redis_url.reveal(), timeout=RATE_LIMIT_TIMEOUT)
    # the chain reads memberships through a one-second cache; reserve re-checks them authoritatively
    chain = default_policies(keys=keys, directory=CachedMemberships(directory), ledger=ledger, policy=policy,
                             catalogue=catalogue, keybox=keybox, counter=counter, record=metrics.settled,
                             on_overage=metrics.overage, balances=ledger.credits, redis=limits,
                             unenforced=metrics.ratelimit_skipped)
    tiers, levels = [t.name for t in policy.tiers], [lv.name for lv in policy.power_levels]
    routes = [
        *caller_routes(identify=identify_with((Authenticate(keys), ResolveOrg(directory))), ledger=ledger,
                       directory=directory, catalogue=catalogue, policy=policy, keybox=keybox,
                       probe=litellm_probe(lambda: upstream.session, settings.upstream_url, settings.upstream_key),
                       created=int(time.time())),
        *admin_routes(directory, ledger, admin_token=settings.admin_token, lookup_key=keys.get,
                      on_revoke=_broadcast(keys), tiers=tiers, power_levels=levels),
        *openapi_routes(tiers=tiers, power_levels=levels),
    ]
    sweeper = Sweeper(ledger, float(policy.sweep_interval_seconds), on_expired=metrics.hold_expired)
    sweeper.start()
    runtime = Runtime(ledger, directory, keys, sweeper, limits, chain, routes)
    runtime.tasks.append(asyncio.get_running_loop().create_task(
        _count_open_holds(ledger, metrics, float(policy.sweep_interval_seconds)), name="creditgate-holds-gauge"))
    return runtime


def _broadcast(keys: KeyCache) -> Callable[[str], Awaitable[None]]:
    """A revocation reaches every replica through Redis; with Redis down the other replicas' subscriptions
    are down too and they read PostgreSQL on every request (KeyCache), so the revocation still holds."""

    async def on_revoke(key_hash: str) -> None:
        await keys.revoke(key_hash)

    return on_revoke


async def _count_open_holds(ledger: PgLedger, metrics: Metrics, interval: float) -> None:
    """Keeps the holds-open gauge current (one indexed count per sweep interval)."""
    while True:
        try:
            metrics.set_holds_open(await ledger.open_holds())
        except Exception:  # noqa: BLE001 - a gauge must never take the replica down
            log.debug("holds gauge not refreshed", exc_info=True)
        await asyncio.sleep(max(interval, 1.0))
