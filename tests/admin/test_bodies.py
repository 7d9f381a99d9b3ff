"""Bounded bodies on every admin and caller route that reads one (issue 7, item 5): past 64 KiB the
answer is 413 `body_too_large` without reading further (Content-Length first, then the streamed
bytes), and nothing of a body is read before its sender is authenticated and allowed to send it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from proxy.api.jsonapi import MAX_BODY_BYTES

from .world import TARGET_A, A, World, headers

CHUNK = 8 * 1024
TOO_LARGE = {"error": {"message": f"The request body exceeds {MAX_BODY_BYTES} bytes.",
                       "type": "invalid_request_error", "param": None, "code": "body_too_large"}}

# (caller, method, path) of every route that reads a body, with a caller allowed to send it
BODY_ROUTES = [
    ("operator", "POST", "/admin/orgs"),
    ("operator", "PATCH", f"/admin/orgs/{A}"),
    ("operator", "POST", f"/admin/orgs/{A}/grants"),
    ("operator", "POST", f"/admin/orgs/{A}/adjustments"),
    ("operator", "POST", "/admin/users"),
    ("admin_a", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}"),
    ("operator", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}"),
    ("admin_a", "POST", "/admin/keys"),
    ("operator", "POST", "/admin/keys"),
    ("member_a", "POST", "/v1/byok/keys"),
    ("admin_a", "POST", "/api/v1/llm/byok/keys"),
    ("member_a", "POST", "/v1/byok/keys/openai/toggle"),
]
IDS = [f"{method} {path} as {caller}" for caller, method, path in BODY_ROUTES]


@dataclass
class Counted:
    """A request body streamed in CHUNK-sized pieces, counting how many the app pulled."""

    chunks: int
    pulled: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(self.chunks):
            self.pulled += 1
            yield b"x" * CHUNK


@pytest.fixture
async def world(shared_world: World) -> AsyncIterator[World]:
    """The module's copy of the world; nothing here may change it."""
    before = await shared_world.audit()
    yield shared_world
    assert await shared_world.audit() == before


@pytest.mark.parametrize(("caller", "method", "path"), BODY_ROUTES, ids=IDS)
async def test_a_declared_length_past_the_limit_is_413_before_a_byte_is_read(
    world: World, caller: str, method: str, path: str
) -> None:
    body = Counted(chunks=1000)  # 8 MB, never produced
    response = await world.http.request(method, path, content=body, headers={
        **headers(caller), "content-length": str(1000 * CHUNK + 10)})
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert body.pulled == 0


@pytest.mark.parametrize(("caller", "method", "path"), BODY_ROUTES, ids=IDS)
async def test_a_streamed_body_stops_being_read_past_the_limit(world: World, caller: str, method: str,
                                                              path: str) -> None:
    body = Counted(chunks=1000)  # no Content-Length: chunked
    response = await world.http.request(method, path, content=body, headers=headers(caller))
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert body.pulled == MAX_BODY_BYTES // CHUNK  # the 8th full chunk passes 64 KiB with the 10-byte head


@pytest.mark.parametrize("size", [MAX_BODY_BYTES, MAX_BODY_BYTES + 1])
async def test_the_limit_is_64_kib_inclusive(world: World, size: int) -> None:
    head = b'{"amount_millicredits": 0, "reason": "r", "idempotency_key": "k"}'
    raw = head + b" " * (size - len(head))
    response = await world.http.post(f"/admin/orgs/{A}/grants", content=raw, headers=headers("operator"))
    if size <= MAX_BODY_BYTES:  # read and parsed whole: its one bad value is named
        assert (response.status_code, response.json()["error"]["param"]) == (400, "amount_millicredits")
    else:
        assert (response.status_code, response.json()) == (413, TOO_LARGE)


@pytest.mark.parametrize("caller", ["stranger", "nobody", "operator"])
@pytest.mark.parametrize("path", ["/v1/byok/keys", "/v1/byok/keys/openai/toggle"])
async def test_strangers_get_401_on_caller_routes_whatever_the_body(world: World, caller: str, path: str) -> None:
    for content in (b"{not json", b"[]", Counted(chunks=1000)):
        response = await world.http.post(path, content=content, headers=headers(caller))
        assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")
        if isinstance(content, Counted):
            assert content.pulled == 0


@pytest.mark.parametrize(("caller", "method", "path"), BODY_ROUTES[:9], ids=IDS[:9])
async def test_strangers_get_401_on_admin_routes_whatever_the_body(world: World, caller: str, method: str,
                                                                  path: str) -> None:
    for who in ("stranger", "nobody"):
        for content in (b"{not json", b'{"unknown": 1}', Counted(chunks=1000)):
            response = await world.http.request(method, path, content=content, headers=headers(who))
            assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")
            if isinstance(content, Counted):
                assert content.pulled == 0


@pytest.mark.parametrize(("caller", "method", "path", "code"), [
    ("member_a", "POST", "/admin/keys", "admin_required"),
    ("member_a", "POST", "/admin/orgs", "operator_only"),
    ("admin_a", "POST", f"/admin/orgs/{A}/grants", "operator_only"),
    ("admin_b", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}", "not_a_member"),
    ("member_a", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}", "admin_required"),
    ("member_a", "POST", "/v1/byok/keys/openai/toggle?scope=org", "not_an_org_admin"),
])
async def test_a_caller_without_the_right_is_refused_before_the_body_is_read(
    world: World, caller: str, method: str, path: str, code: str
) -> None:
    body = Counted(chunks=1000)
    response = await world.http.request(method, path, content=body, headers=headers(caller))
    assert (response.status_code, response.json()["error"]["code"]) == (403, code)
    assert body.pulled == 0
