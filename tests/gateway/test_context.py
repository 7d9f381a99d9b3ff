"""The request context: what a stream delivered is counted lazily, never fewer tokens than chunks."""

from __future__ import annotations

import pytest

from proxy.gateway.context import OutputMeter, RequestContext


def test_the_meter_counts_lazily_and_never_below_the_chunks() -> None:
    calls: list[str] = []

    def encode(text: str) -> int:
        calls.append(text)
        return len(text.split())

    meter = OutputMeter(encode)
    for piece in ("Hello", " big", " world"):
        meter.feed(piece)
    assert calls == [] and meter.chunks == 3
    assert meter.tokens() == 3 and calls == ["Hello big world"]
    meter.feed("")
    meter.feed("")
    assert meter.tokens() == 5  # five chunks arrived: at least five tokens
    assert calls == ["Hello big world"]


def test_without_a_tokenizer_four_characters_make_a_token() -> None:
    meter = OutputMeter()
    meter.feed("x" * 40)
    assert meter.tokens() == 10


def test_policies_that_run_out_of_order_fail_loudly() -> None:
    ctx = RequestContext(request_id="req_c", route="chat/completions", headers={}, body={})
    with pytest.raises(RuntimeError, match="Authenticate"):
        ctx.require_key()
    with pytest.raises(RuntimeError, match="ResolveOrg"):
        ctx.require_membership()
