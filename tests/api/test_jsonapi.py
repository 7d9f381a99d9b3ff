"""The JSON layer the caller and admin routes share, unit by unit: answers, bounded bodies, control
characters, paging, RFC 3339 times and windows. Each refusal is the contract's 4xx naming its param."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from starlette.requests import Request

from proxy.api.answers import Listing, ProviderKey
from proxy.api.jsonapi import (
    MAX_LIMIT,
    id_cursor,
    json_response,
    page,
    parse_time,
    read_bytes,
    reject_control,
    time_window,
)
from proxy.errors import ProxyError


def refusal(call: Any, *args: Any) -> tuple[int, str | None, str | None]:
    with pytest.raises(ProxyError) as info:
        call(*args)
    return info.value.status, info.value.code, info.value.param


def request(chunks: list[bytes], length: str | None = None) -> tuple[Request, list[int]]:
    pulled: list[int] = []
    headers = [(b"content-length", length.encode())] if length is not None else []

    async def receive() -> dict[str, Any]:
        pulled.append(1)
        body = chunks[len(pulled) - 1] if len(pulled) <= len(chunks) else b""
        return {"type": "http.request", "body": body, "more_body": len(pulled) < len(chunks)}

    return Request({"type": "http", "method": "POST", "headers": headers, "path": "/", "query_string": b""},
                   receive), pulled


def test_answers_render_decimals_exactly_and_times_in_utc() -> None:
    answer = json_response({"a": Decimal("5"), "p": Decimal("0.0000025"),
                            "t": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}, 201)
    assert answer.status_code == 201 and answer.media_type == "application/json"
    assert orjson.loads(answer.body) == {"a": 5, "p": "0.0000025", "t": "2026-01-02T03:04:05Z"}


def test_declared_answers_render_like_rows() -> None:
    """A struct's unset fields are left out; its times and Decimals render as a row's do."""
    key = ProviderKey(provider="openai", scope="org", masked_key="****0001", enabled=True,
                      created_at=datetime(2026, 1, 2, tzinfo=UTC), updated_at=None)
    assert orjson.loads(json_response(Listing(data=[key], has_more=False)).body) == {"data": [{
        "provider": "openai", "scope": "org", "masked_key": "****0001", "enabled": True,
        "created_at": "2026-01-02T00:00:00Z", "updated_at": None}], "has_more": False}
    key.active = False
    assert orjson.loads(json_response({"key": key, "n": Decimal("2")}).body)["key"]["active"] is False


async def test_a_body_is_read_up_to_its_limit_and_no_further() -> None:
    small, _ = request([b'{"a":', b" 1}"])
    assert await read_bytes(small, limit=16) == b'{"a": 1}'
    exact, _ = request([b"x" * 16], length="16")
    assert await read_bytes(exact, limit=16) == b"x" * 16
    declared, pulled = request([b"x" * 10], length="17")
    with pytest.raises(ProxyError) as info:
        await read_bytes(declared, limit=16)
    assert (info.value.status, info.value.code, pulled) == (413, "body_too_large", [])
    streamed, pulled = request([b"x" * 10] * 100)
    with pytest.raises(ProxyError) as info:
        await read_bytes(streamed, limit=16)
    assert (info.value.status, info.value.code, len(pulled)) == (413, "body_too_large", 2)


@pytest.mark.parametrize("value", ["a\x00b", "\x1f", "x\x7f", "\x85"])
def test_control_characters_are_refused(value: str) -> None:
    assert refusal(reject_control, value, "org") == (400, "invalid_value", "org")
    assert reject_control("org_1 é", "org") == "org_1 é"


def test_paging() -> None:
    keys = id_cursor("key")
    assert page({}, keys) == (50, None)
    assert page({"limit": str(MAX_LIMIT), "after": "key_abc"}, keys) == (MAX_LIMIT, "key_abc")
    for bad in ("0", str(MAX_LIMIT + 1), "²", "-1", "1.5", "9" * 30):
        assert refusal(page, {"limit": bad}, keys) == (400, "invalid_value", "limit")
    for bad in ("abc", "org_abc", ""):
        assert refusal(page, {"after": bad}, keys) == (400, "invalid_value", "after")


@pytest.mark.parametrize(("raw", "expected"), [
    ("2026-01-31T00:00:00Z", datetime(2026, 1, 31, tzinfo=UTC)),
    ("2026-01-31t01:30:00.1234567+01:30", datetime(2026, 1, 31, 0, 0, 0, 123456, tzinfo=UTC)),
    ("2026-01-31 00:00:00-00:00", datetime(2026, 1, 31, tzinfo=UTC)),
])
def test_rfc3339_times_become_aware_utc(raw: str, expected: datetime) -> None:
    assert parse_time(raw, "start") == expected


@pytest.mark.parametrize("raw", ["2026-01-31", "2026-01-31T00:00:00", "0000-01-01T00:00:00Z",
                                 "99999-01-01T00:00:00Z", "2026-01-31T00:00:00+24:00", "0001-01-01T00:00:00+01:00",
                                 "9999-12-31T23:59:59-01:00", "2026-02-30T00:00:00Z", "２０２６-01-31T00:00:00Z"])
def test_other_times_are_400_naming_the_param(raw: str) -> None:
    assert refusal(parse_time, raw, "start") == (400, "invalid_value", "start")


def test_an_empty_or_reversed_window_names_end() -> None:
    assert time_window({}) == (None, None)
    at = "2026-01-31T00:00:00Z"
    assert refusal(time_window, {"start": at, "end": at}) == (400, "invalid_value", "end")
    assert refusal(time_window, {"start": at, "end": "2026-01-30T00:00:00Z"}) == (400, "invalid_value", "end")
