"""An in-process Starlette app with only the caller routes and a ProxyError renderer, over
httpx.ASGITransport (these routes do not stream), backed by the real PgDirectory on a fresh
migrated database, the shipped LiteLLM config and policy file, and a real Fernet key box."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from devstack import services
from proxy.caller.routes import caller_routes
from proxy.config.catalogue import Catalogue, load_catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.policy import PolicyConfig, load_policy
from proxy.config.settings import Secret
from proxy.db.migrate import migrate
from proxy.directory.crypto import KeyBox
from proxy.directory.pg import PgDirectory
from proxy.errors import ProxyError
from tests.fakes import FakeLedger

from .fakes import FakeIdentify, FakeProbe, member

ROOT = Path(__file__).resolve().parents[2]
CREATED = 1767225600
TOKENS = {
    "alice": member("org_a", "usr_alice"),
    "bob": member("org_a", "usr_bob"),
    "root": member("org_a", "usr_root", role="admin"),
    "carol": member("org_b", "usr_carol", role="admin"),
    "frank": member("org_f", "usr_frank", tier="free"),
}
ORGS = {"org_a": "starter", "org_b": "starter", "org_f": "free"}
_seq = itertools.count(1)


async def render(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return Response(exc.to_bytes(), status_code=exc.status, media_type="application/json", headers=exc.headers)


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue(ROOT / "litellm_config.yaml")


@pytest.fixture(scope="session")
def policy() -> PolicyConfig:
    return load_policy(ROOT / "policy.yaml")


@pytest.fixture
def keybox() -> KeyBox:
    return KeyBox([Secret(Fernet.generate_key().decode())])


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _prepare_template(dsn: str) -> None:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        for org_id, tier in ORGS.items():
            await conn.execute("INSERT INTO creditgate.orgs (id, name, tier) VALUES ($1, $1, $2)", org_id, tier)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def caller_template(pg: services.Service) -> str:
    """A migrated database with the test orgs, copied per test (CREATE DATABASE ... TEMPLATE is far
    cheaper than migrating every time)."""
    dsn = services.create_database(pg.url, "caller_template")
    asyncio.run(_prepare_template(dsn))
    return dsn


@pytest.fixture
def fresh_db(pg: services.Service, caller_template: str) -> str:
    """Overrides the root fixture for this folder: a new database, already migrated, with ORGS."""
    name = f"caller_{next(_seq)}"
    copy = f'CREATE DATABASE "{name}" TEMPLATE caller_template'
    asyncio.run(_admin(pg.url, f'DROP DATABASE IF EXISTS "{name}"', copy))
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@dataclass
class Caller:
    http: httpx.AsyncClient
    ledger: FakeLedger
    directory: PgDirectory
    probe: FakeProbe
    keybox: KeyBox

    async def get(self, path: str, who: str = "alice", **kw: Any) -> httpx.Response:
        return await self.http.get(path, headers={"Authorization": f"Bearer {who}"}, **kw)

    async def post(self, path: str, who: str = "alice", **kw: Any) -> httpx.Response:
        return await self.http.post(path, headers={"Authorization": f"Bearer {who}"}, **kw)

    async def delete(self, path: str, who: str = "alice", **kw: Any) -> httpx.Response:
        return await self.http.delete(path, headers={"Authorization": f"Bearer {who}"}, **kw)


@pytest.fixture
async def caller(pool: asyncpg.Pool, catalogue: Catalogue, policy: PolicyConfig, keybox: KeyBox
                 ) -> AsyncIterator[Caller]:
    ledger, directory, probe = FakeLedger(), PgDirectory(pool), FakeProbe()
    routes = caller_routes(identify=FakeIdentify(TOKENS), ledger=ledger, directory=directory,
                           config=LiveConfig(Snapshot.of(policy, catalogue)), keybox=keybox, probe=probe,
                           created=CREATED)
    app = Starlette(routes=routes, exception_handlers={ProxyError: render})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield Caller(http, ledger, directory, probe, keybox)


def error(status: int, type_: str, code: str, message: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": type_, "param": param, "code": code}}


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()
