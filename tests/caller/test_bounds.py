"""The caller routes' input bounds with the stores faked: one bounded reader shared with the admin
routes, identify before any body or query is looked at, and cursors and windows refused before the
ledger is asked (`after=abc` used to reach it and be ignored there)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import proxy.admin.deps
import proxy.caller.byok
from proxy.api import decode, jsonapi

from .conftest import Caller, answer, error


def test_caller_and_admin_bodies_go_through_one_bounded_reader() -> None:
    assert proxy.caller.byok.BodyReader is proxy.admin.deps.BodyReader is decode.BodyReader
    assert decode.read_bytes is jsonapi.read_bytes
    assert jsonapi.MAX_BODY_BYTES == 64 * 1024


class Endless:
    """A body that would never end; counts what was pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < 10_000:
            self.pulled += 1
            yield b" " * 4096


@pytest.mark.parametrize("path", ["/v1/byok/keys", "/api/v1/llm/byok/keys/openai/toggle"])
async def test_an_unknown_key_is_401_and_nothing_of_the_body_is_read(caller: Caller, path: str) -> None:
    body = Endless()
    response = await caller.post(path, "nobody", content=body)
    assert answer(response) == error(401, "authentication_error", "invalid_api_key", "Invalid API key.")
    assert body.pulled == 0


@pytest.mark.parametrize("path", ["/v1/byok/keys", "/v1/byok/keys/openai/toggle"])
async def test_an_endless_body_is_cut_at_64_kib(caller: Caller, path: str) -> None:
    body = Endless()
    response = await caller.post(path, content=body)
    assert answer(response) == error(413, "invalid_request_error", "body_too_large",
                                     "The request body exceeds 65536 bytes.")
    assert body.pulled == 17  # 16 chunks of 4 KiB fill the limit exactly; the 17th passes it


@pytest.mark.parametrize("after", ["abc", "e5", "0", "18446744073709551616", "1\u0000"])
async def test_history_refuses_cursors_it_never_produced_without_asking_the_ledger(caller: Caller,
                                                                                   after: str) -> None:
    response = await caller.get("/v1/credits/history", params={"after": after})
    status, body = answer(response)
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "invalid_value", "after")
    assert caller.ledger.calls == []


async def test_history_passes_a_good_cursor_on(caller: Caller) -> None:
    caller.ledger.entries_rows = [{"id": "9223372036854775807", "user_id": "usr_alice"},
                                  {"id": "3", "user_id": "usr_alice"}]
    response = await caller.get("/v1/credits/history", params={"after": "9223372036854775807"})
    assert answer(response) == (200, {"data": [{"id": "3", "user_id": "usr_alice"}], "has_more": False})
    assert caller.ledger.calls == [("entries", ("org_a", "usr_alice", 50, "9223372036854775807"))]


@pytest.mark.parametrize("start", ["0001-01-01T00:00:00+00:01", "0000-12-31T23:59:59Z", "10000-01-01T00:00:00Z",
                                   "9999-12-31T23:59:59-00:01", "2026-01-01T00:00:00+24:00"])
async def test_usage_refuses_times_outside_what_the_ledger_holds(caller: Caller, start: str) -> None:
    status, body = answer(await caller.get("/v1/usage", params={"start": start}))
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "invalid_value", "start")
    assert caller.ledger.calls == []


async def test_a_request_id_with_a_nul_never_reaches_the_ledger(caller: Caller) -> None:
    status, body = answer(await caller.get("/v1/requests/r%001"))
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "invalid_value", "request_id")
    assert caller.ledger.calls == []
