"""Any body is either accepted or a 400 ProxyError from parse_request: never another exception."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ProxyError
from proxy.gateway.body import observe_answer, parse_request
from proxy.gateway.context import RequestContext
from proxy.gateway.upstream import upstream_body

ROUTES = ["chat/completions", "completions", "embeddings", "images/generations"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = ["model", "messages", "prompt", "input", "stream", "n", "max_tokens", "stream_options", "api_key"]
bodies = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=8)


@settings(max_examples=400, deadline=None)
@given(body=bodies, route=st.sampled_from(ROUTES))
def test_any_json_object_is_accepted_or_a_400(body: dict[str, Any], route: str) -> None:
    try:
        parsed, stream = parse_request(orjson.dumps(body), route)
    except ProxyError as err:
        assert err.status == 400 and err.code in ("invalid_json", "missing_field", "invalid_value")
        return
    ctx = RequestContext(request_id="r", route=route, headers={}, body=parsed, stream=stream)
    sent = orjson.loads(upstream_body(ctx))
    assert "api_key" not in sent and isinstance(sent["model"], str)
    if stream:
        assert sent["stream_options"]["include_usage"] is True


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_any_bytes_are_accepted_or_a_400(raw: bytes) -> None:
    try:
        parse_request(raw, "chat/completions")
    except ProxyError as err:
        assert err.status == 400


@settings(max_examples=200, deadline=None)
@given(answer=json_values)
def test_any_upstream_answer_is_read_or_a_502(answer: Any) -> None:
    ctx = RequestContext(request_id="r", route="chat/completions", headers={}, body={})
    try:
        observe_answer(ctx, orjson.dumps(answer))
    except ProxyError as err:
        assert (err.status, err.code) == (502, "upstream_failed")


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 3, "completion_tokens": 4, "cost": 0.1}, (3, 4)),
    ({"input_tokens": 5, "output_tokens": 0}, (5, 0)),
    ({"prompt_tokens": -1, "completion_tokens": 4}, None),
    ({"prompt_tokens": "3"}, None),
])
def test_answer_usage(usage: dict[str, Any], expected: tuple[int, int] | None) -> None:
    ctx = RequestContext(request_id="r", route="chat/completions", headers={}, body={})
    out = orjson.loads(observe_answer(ctx, orjson.dumps({"id": "x", "usage": usage, "response_cost": 1})))
    assert "cost" not in out["usage"] and "response_cost" not in out
    assert (None if ctx.usage is None else (ctx.usage.prompt_tokens, ctx.usage.completion_tokens)) == expected
