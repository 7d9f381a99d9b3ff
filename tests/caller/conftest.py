"""An in-process Starlette app with only the caller routes and the ProxyError renderer, over
httpx.ASGITransport (these routes do not stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet, MultiFernet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from proxy.caller import caller_routes
from proxy.errors import ProxyError

from .fakes import MODELS, FakeIdentify, FakeKeys, FakeLedger, FakeProbe, member, tier_allows

CREATED = 1767225600
TOKENS = {
    "alice": member("org_a", "usr_alice"),
    "bob": member("org_a", "usr_bob"),
    "root": member("org_a", "usr_root", role="admin"),
    "carol": member("org_b", "usr_carol", role="admin"),
    "frank": member("org_f", "usr_frank", tier="free"),
}


async def render(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return Response(exc.to_bytes(), status_code=exc.status, media_type="application/json", headers=exc.headers)


def build_app(*, ledger: Any, directory: Any, probe: Any, fernet: MultiFernet) -> Starlette:
    routes = caller_routes(
        identify=FakeIdentify(TOKENS), ledger=ledger, directory=directory, models=MODELS, tier_allows=tier_allows,
        encrypt=lambda key: fernet.encrypt(key.encode()), decrypt=lambda token: fernet.decrypt(token).decode(),
        probe=probe, created=CREATED,
    )
    return Starlette(routes=routes, exception_handlers={ProxyError: render})


@dataclass
class Caller:
    http: httpx.AsyncClient
    ledger: FakeLedger
    keys: Any
    probe: FakeProbe
    fernet: MultiFernet

    async def get(self, path: str, who: str = "alice", **kw: Any) -> httpx.Response:
        return await self.http.get(path, headers={"Authorization": f"Bearer {who}"}, **kw)

    async def post(self, path: str, who: str = "alice", **kw: Any) -> httpx.Response:
        return await self.http.post(path, headers={"Authorization": f"Bearer {who}"}, **kw)

    async def delete(self, path: str, who: str = "alice", **kw: Any) -> httpx.Response:
        return await self.http.delete(path, headers={"Authorization": f"Bearer {who}"}, **kw)


@pytest.fixture
def fernet() -> MultiFernet:
    return MultiFernet([Fernet(Fernet.generate_key())])


@pytest.fixture
async def caller(fernet: MultiFernet) -> AsyncIterator[Caller]:
    ledger, keys, probe = FakeLedger(), FakeKeys(), FakeProbe()
    app = build_app(ledger=ledger, directory=keys, probe=probe, fernet=fernet)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield Caller(http, ledger, keys, probe, fernet)


def error(status: int, type_: str, code: str, message: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": type_, "param": param, "code": code}}


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()
