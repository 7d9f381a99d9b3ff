"""Console fixtures: the two-org world of tests/admin/world.py (seeded once, copied per test or module)
served by the real app with the admin routes and the console routes over the real PgLedger and
PgDirectory, and signed-in clients for each caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from devstack import services
from proxy.admin.routes import admin_routes
from proxy.app import create_app
from proxy.config.settings import Secret
from proxy.console.routes import console_routes
from proxy.directory.pg import PgDirectory
from proxy.export.alerts import PgAlerts
from proxy.export.outbox import PgOutbox
from proxy.ledger.pg import PgLedger
from tests.admin.conftest import POWER_LEVELS, TIERS, lanes_copy, lanes_template  # noqa: F401 - fixture
from tests.admin.world import CREDENTIALS, TOKEN, headers, settings

BASE = "http://gw.test"
ORIGIN = {"origin": BASE}


@dataclass
class ConsoleWorld:
    app: Any
    pool: asyncpg.Pool
    directory: PgDirectory
    ledger: PgLedger
    broadcasts: list[str] = field(default_factory=list)  # key hashes given to on_revoke, in order
    broadcast_fails: bool = False  # on_revoke raises (a replica could not be told)

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url=BASE)

    async def api(self, caller: str, path: str, **params: Any) -> Any:
        async with self.client() as http:
            response = await http.get(path, headers=headers(caller), params=params or None)
        assert response.status_code == 200, response.text
        return response.json()

    @asynccontextmanager
    async def signed_in(self, caller: str) -> AsyncIterator[httpx.AsyncClient]:
        """A client whose cookie jar holds `caller`'s console session."""
        async with self.client() as http:
            credential = CREDENTIALS[caller]
            assert credential is not None
            answer = await http.post("/console/login", data={"credential": credential}, headers=ORIGIN)
            assert answer.status_code == 303, answer.text
            yield http


@asynccontextmanager
async def open_console(dsn: str, now: Callable[[], datetime] | None = None) -> AsyncIterator[ConsoleWorld]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    ledger, directory, alerts = PgLedger(pool, hold_ttl_seconds=120), PgDirectory(pool), PgAlerts(pool)
    world: ConsoleWorld | None = None

    async def on_revoke(key_hash: str) -> None:
        assert world is not None
        if world.broadcast_fails:
            raise ConnectionError("redis down")
        world.broadcasts.append(key_hash)

    routes = [
        *admin_routes(directory, ledger, admin_token=Secret(TOKEN), lookup_key=directory.api_key,
                      on_revoke=on_revoke, tiers=TIERS, power_levels=POWER_LEVELS, dead_letters=PgOutbox(pool),
                      alerts=alerts),
        *console_routes(directory, ledger, pool, admin_token=Secret(TOKEN), lookup_key=directory.api_key,
                        tiers=TIERS, power_levels=POWER_LEVELS, alerts=alerts, on_revoke=on_revoke, now=now),
    ]
    app = create_app(settings(), policies=(), routes=routes)
    world = ConsoleWorld(app, pool, directory, ledger)
    try:
        yield world
    finally:
        await ledger.close()


@pytest.fixture
async def console(pg: services.Service, lanes_template: str) -> AsyncIterator[ConsoleWorld]:  # noqa: F811
    """A fresh copy of the two-org world behind the console."""
    async with lanes_copy(pg, lanes_template) as dsn, open_console(dsn) as world:
        yield world


@pytest.fixture(scope="module")
async def shared_console(pg: services.Service, lanes_template: str) -> AsyncIterator[ConsoleWorld]:  # noqa: F811
    """One copy for a module whose tests only read or are refused."""
    async with lanes_copy(pg, lanes_template) as dsn, open_console(dsn) as world:
        yield world
