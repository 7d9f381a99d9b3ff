"""GET/DELETE /v1/responses/{id} in process: an id not recorded for the caller is 404 without asking
LiteLLM; the owner's request is forwarded and its answer loses LiteLLM's internals. (Through the real
LiteLLM: tests/e2e/test_responses.py.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from proxy.caller.responses import response_routes
from proxy.errors import ProxyError
from tests.policies.test_responses import Owners

from .conftest import render
from .fakes import FakeIdentify, member

ANSWER = {"id": "resp_1", "object": "response", "usage": {"input_tokens": 3, "output_tokens": 6, "cost": 1e-6},
          "_hidden_params": {"api_base": "http://10.0.0.1"}}


class Fetch:
    def __init__(self, status: int = 200, body: Any = ANSWER) -> None:
        self.status, self.body = status, body
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, path: str, method: str = "GET") -> tuple[int, Mapping[str, str], bytes]:
        self.calls.append((method, path))
        return self.status, {}, orjson.dumps(self.body)


def client(fetch: Fetch, owners: Owners) -> httpx.AsyncClient:
    identify = FakeIdentify({"alice": member("org_a", "usr_alice"), "bob": member("org_a", "usr_bob")})
    app = Starlette(routes=response_routes(identify=identify, owners=owners, fetch=fetch),
                    exception_handlers={ProxyError: render})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def alices() -> Owners:
    owners = Owners()
    owners.rows.add(("org_a", "usr_alice", "resp_1"))
    return owners


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_another_members_or_an_unknown_id_is_404_without_asking_litellm(method: str) -> None:
    fetch = Fetch()
    async with client(fetch, alices()) as http:
        for token, rid in (("bob", "resp_1"), ("alice", "resp_2")):
            for prefix in ("/v1", "/api/v1/llm"):
                resp = await http.request(method, f"{prefix}/responses/{rid}",
                                          headers={"authorization": f"Bearer {token}"})
                assert resp.status_code == 404
                assert resp.json() == {"error": {"message": f"No response '{rid}' found.", "type": "not_found_error",
                                                 "param": None, "code": "response_not_found"}}
        assert (await http.get("/v1/responses/resp_1")).status_code == 401
    assert fetch.calls == []


async def test_the_owner_reads_it_without_litellms_internals() -> None:
    fetch = Fetch()
    async with client(fetch, alices()) as http:
        resp = await http.get("/v1/responses/resp_1", headers={"authorization": "Bearer alice"})
    assert resp.status_code == 200
    assert resp.json() == {"id": "resp_1", "object": "response", "usage": {"input_tokens": 3, "output_tokens": 6}}
    assert fetch.calls == [("GET", "/v1/responses/resp_1")]


async def test_a_delete_forwards_then_forgets_the_id() -> None:
    owners, fetch = alices(), Fetch(body={"id": "resp_1", "object": "response.deleted", "deleted": True})
    async with client(fetch, owners) as http:
        resp = await http.delete("/v1/responses/resp_1", headers={"authorization": "Bearer alice"})
        assert resp.json() == {"id": "resp_1", "object": "response.deleted", "deleted": True}
        again = await http.get("/v1/responses/resp_1", headers={"authorization": "Bearer alice"})
    assert again.status_code == 404 and fetch.calls == [("DELETE", "/v1/responses/resp_1")]
    assert owners.rows == set()


@pytest.mark.parametrize(("status", "body", "expected"), [
    (404, {"error": {"message": "litellm.NotFoundError: OpenAIException"}}, (404, "response_not_found")),
    (500, {"error": {"message": "litellm internal at 10.0.0.1"}}, (502, "upstream_failed")),
    (200, ["not", "an", "object"], (502, "upstream_failed")),
])
async def test_litellms_failures_are_translated(status: int, body: Any, expected: tuple[int, str]) -> None:
    owners = alices()
    async with client(Fetch(status, body), owners) as http:
        resp = await http.delete("/v1/responses/resp_1", headers={"authorization": "Bearer alice"})
    assert (resp.status_code, resp.json()["error"]["code"]) == expected
    assert "litellm" not in resp.text.lower()
    assert owners.rows == {("org_a", "usr_alice", "resp_1")}  # a failed delete forgets nothing
