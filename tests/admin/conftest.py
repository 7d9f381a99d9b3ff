"""Admin-area fixtures: a migrated fresh database, a PgDirectory, and an in-process admin app (over the
shared in-memory FakeLedger of tests/fakes.py, or the real ledger in test_real_ledger.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from devstack import services
from proxy.admin.routes import admin_routes
from proxy.api.stores import LedgerAdmin
from proxy.config.settings import Secret
from proxy.db.migrate import migrate
from proxy.directory.pg import PgDirectory
from proxy.errors import ProxyError
from tests.fakes import FakeLedger

from .world import World, open_world, seed

TOKEN = "operator-token-" + "x" * 24
OPERATOR = {"authorization": f"Bearer {TOKEN}"}
TIERS = ("free", "starter", "professional", "enterprise")
POWER_LEVELS = ("eco", "balanced", "precision")
_shared = itertools.count(1)
_lanes = itertools.count(1)
# what the admin tests' fake ledger answers for usage (tests/admin/test_orgs.py asserts it)
USAGE_ROWS = [{"group": "x", "requests": 2, "prompt_tokens": 10, "completion_tokens": 5, "charged_millicredits": 42,
               "list_price_millicredits": 70}]


def fake_ledger_for_admin() -> FakeLedger:
    return FakeLedger(usage_rows=[dict(row) for row in USAGE_ROWS])


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Admin:
    """An in-process app serving admin_routes over a real PgDirectory, and helpers to seed it."""

    http: httpx.AsyncClient
    directory: PgDirectory
    ledger: LedgerAdmin
    pool: asyncpg.Pool
    revoked: list[str] = field(default_factory=list)

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                   **params: Any) -> httpx.Response:
        return await self.http.request(method, path, json=body, headers=headers or OPERATOR, params=params or None)

    async def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = await self.call(method, path, body, **params)
        assert response.status_code in (200, 201), response.text
        return response.json()

    async def org(self, name: str = "Acme", tier: str = "starter") -> str:
        return str((await self.ok("POST", "/admin/orgs", {"name": name, "tier": tier}))["id"])

    async def user(self, email: str) -> str:
        return str((await self.ok("POST", "/admin/users", {"email": email, "name": email.split("@")[0]}))["id"])

    async def member(self, org: str, user: str, **fields: Any) -> Any:
        return await self.ok("PUT", f"/admin/orgs/{org}/members/{user}", fields)

    async def key(self, user: str, org: str | None = None) -> tuple[str, str]:
        body = {"user_id": user, "name": "k"} | ({"org_id": org} if org else {})
        created = await self.ok("POST", "/admin/keys", body)
        return str(created["id"]), str(created["key"])

    async def org_admin(self, org: str, email: str = "boss@acme.test") -> tuple[str, dict[str, str]]:
        """A new user made admin of `org`, with the auth header of a key bound to it."""
        user = await self.user(email)
        await self.member(org, user, role="admin")
        _, key = await self.key(user, org)
        return user, bearer(key)

    async def audit(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT actor, action, org_id, target FROM creditgate.admin_audit ORDER BY id")
        return [dict(r) for r in rows]


async def render(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return Response(exc.to_bytes(), exc.status, headers=exc.headers, media_type="application/json")


def build_app(directory: PgDirectory, ledger: LedgerAdmin, revoked: list[str]) -> Starlette:
    async def on_revoke(key_hash: str) -> None:
        revoked.append(key_hash)

    routes = admin_routes(
        directory, ledger, admin_token=Secret(TOKEN), lookup_key=directory.api_key, on_revoke=on_revoke,
        tiers=TIERS, power_levels=POWER_LEVELS,
    )
    return Starlette(routes=routes, exception_handlers={ProxyError: render})


@pytest.fixture(scope="module")
async def shared_admin(pg: services.Service) -> AsyncIterator[Admin]:
    """One migrated database and app for a whole module, for tests that only read or are refused."""
    name = f"admin_shared_{next(_shared)}"
    conn = await asyncpg.connect(pg.url)  # services.create_database runs its own loop: not from a coroutine
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = pg.url.rsplit("/", 1)[0] + f"/{name}"
    await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    directory, ledger = PgDirectory(pool), fake_ledger_for_admin()
    revoked: list[str] = []
    app = build_app(directory, ledger, revoked)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as http:
        yield Admin(http, directory, ledger, pool, revoked)
    await pool.close()


@pytest.fixture
def fake_ledger() -> FakeLedger:
    return fake_ledger_for_admin()


@pytest.fixture
async def admin(pool: asyncpg.Pool, directory: PgDirectory, fake_ledger: FakeLedger) -> AsyncIterator[Admin]:
    revoked: list[str] = []
    app = build_app(directory, fake_ledger, revoked)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as http:
        yield Admin(http, directory, fake_ledger, pool, revoked)


@pytest.fixture(scope="session")
def lanes_template(pg: services.Service) -> str:
    """The two-org world of tests/admin/world.py, seeded once; tests work on copies of it."""
    services.create_database(pg.url, "lanes_template")
    asyncio.run(seed(pg.url.rsplit("/", 1)[0] + "/lanes_template"))
    return "lanes_template"


@asynccontextmanager
async def lanes_copy(pg: services.Service, template: str) -> AsyncIterator[str]:
    """A fresh copy of `template` (its DSN), dropped afterwards."""
    name = f"lanes_{next(_lanes)}"
    conn = await asyncpg.connect(pg.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    try:
        yield pg.url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        conn = await asyncpg.connect(pg.url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def world(pg: services.Service, lanes_template: str) -> AsyncIterator[World]:
    """The real app over a fresh copy of the two-org world."""
    async with lanes_copy(pg, lanes_template) as dsn, open_world(dsn) as opened:
        yield opened


@pytest.fixture(scope="module")
async def shared_world(pg: services.Service, lanes_template: str) -> AsyncIterator[World]:
    """One copy for a module whose tests change nothing (they assert so)."""
    async with lanes_copy(pg, lanes_template) as dsn, open_world(dsn) as opened:
        yield opened
