"""The hop to LiteLLM: the body it receives is the allowlist (plus the model's forward_params), the
chain's model, the member's key at the top level and, for streams, include_usage forced on; the
session exists only between open and close."""

from __future__ import annotations

import orjson
import pytest

from proxy.config.settings import Secret
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from proxy.gateway.upstream import NotOpen, Upstream, upstream_body
from tests.gateway.conftest import make_settings


def ctx(body: dict[str, object], *, stream: bool = False, route: str = "chat/completions") -> RequestContext:
    return RequestContext(request_id="req_u", route=route, headers={}, body=body, stream=stream)


def test_the_body_is_built_from_the_allowlist() -> None:
    request = ctx({"model": "auto", "messages": [], "temperature": 0.5, "top_k": 3, "api_key": "sk-client",
                   "headers": {"Authorization": "x"}, "fake_chunks": 2, "stream": True,
                   "stream_options": {"include_usage": False, "include_obfuscation": False, "nope": 1}}, stream=True)
    request.model, request.forward_params = "fake-small", frozenset({"top_k"})
    assert orjson.loads(upstream_body(request)) == {
        "model": "fake-small", "messages": [], "temperature": 0.5, "top_k": 3, "stream": True,
        "stream_options": {"include_obfuscation": False, "include_usage": True}}


def test_a_member_key_goes_at_the_top_level_and_embeddings_keep_their_own_fields() -> None:
    request = ctx({"model": "fake-embed", "input": "hi", "dimensions": 8, "messages": []}, route="embeddings")
    request.byok_key = Secret("sk-member")
    assert orjson.loads(upstream_body(request)) == {"model": "fake-embed", "input": "hi", "dimensions": 8,
                                                    "api_key": "sk-member"}


async def test_the_session_exists_between_open_and_close() -> None:
    """Outside the lifespan the hop fails as the contract's 502, never a 500."""
    upstream = Upstream(make_settings("http://127.0.0.1:9"))
    with pytest.raises(NotOpen, match="open"):
        _ = upstream.session
    with pytest.raises(ProxyError) as closed:
        await upstream.post("/v1/chat/completions", b"{}", traceparent=f"00-{'a' * 32}-{'b' * 16}-01")
    assert (closed.value.status, closed.value.code) == (502, "upstream_failed")
    await upstream.open()
    assert not upstream.session.closed
    await upstream.close()
    with pytest.raises(NotOpen):
        _ = upstream.session
