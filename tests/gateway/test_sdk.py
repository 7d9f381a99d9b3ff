"""The OpenAI Python SDK, sync and async, through the gateway and straight to LiteLLM."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from devstack import services
from tests.gateway.conftest import Gateway, chat, new_request_id

# 2 words + 1 per message = 3 prompt tokens at the fake provider
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi there"}]


def client(gateway: Gateway, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-any-client-key", max_retries=0,
                         default_headers=headers or None)


def aclient(gateway: Gateway, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="sk-any-client-key", max_retries=0,
                              default_headers=headers or None)


def direct(litellm: services.Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{litellm.url}/v1", api_key=services.MASTER_KEY, max_retries=0)


def test_sync_nonstream_matches_litellm(gateway: Gateway, litellm: services.Service) -> None:
    rid = new_request_id()
    with client(gateway) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="fake-small", messages=MESSAGES, extra_body={"fake_chunks": 4}, extra_headers={"x-request-id": rid}
        )
    answer = raw.parse()
    with direct(litellm) as d:
        reference = d.chat.completions.create(model="fake-small", messages=MESSAGES, extra_body={"fake_chunks": 4})
    assert answer.choices[0].message.content == reference.choices[0].message.content == "Hello w1 w2 w3"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (3, 4, 7)
    assert "cost" not in (answer.usage.model_extra or {})
    assert raw.headers["x-request-id"] == rid
    ctx = gateway.probe.context(rid)
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (3, 4)  # type: ignore[union-attr]
    assert ctx.deployment_id == "fake-small-1"
    assert ctx.upstream_status == 200 and ctx.failure is None and ctx.request_id == rid


def test_sync_stream_without_usage_never_shows_the_usage_chunk(gateway: Gateway, litellm: services.Service) -> None:
    rid = new_request_id()
    with client(gateway) as c:
        chunks = list(c.chat.completions.create(model="fake-small", messages=MESSAGES, stream=True,
                                                extra_headers={"x-request-id": rid}))
    with direct(litellm) as d:
        reference = list(d.chat.completions.create(model="fake-small", messages=MESSAGES, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "".join(ch.choices[0].delta.content or "" for ch in reference if ch.choices)
    assert text == "Hello w1 w2 w3 w4 w5"
    assert all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)
    ctx = gateway.probe.context(rid)
    # the gateway asked LiteLLM for include_usage anyway, so it knows the real usage
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (3, 6)  # type: ignore[union-attr]
    assert ctx.client_wants_usage is False and ctx.failure is None and ctx.response_started
    assert ctx.meter.chunks == 6


async def test_async_stream_with_usage_gets_one_spec_usage_chunk(gateway: Gateway) -> None:
    rid = new_request_id()
    async with aclient(gateway) as c:
        stream = await c.chat.completions.create(
            model="fake-small", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            extra_body={"fake_chunks": 3}, extra_headers={"x-request-id": rid},
        )
        chunks = [chunk async for chunk in stream]
    with_usage = [ch for ch in chunks if ch.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 3, 6)
    assert "cost" not in (last.usage.model_extra or {})
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello w1 w2"


async def test_async_nonstream_completions_embeddings_images(gateway: Gateway) -> None:
    ids = [new_request_id() for _ in range(3)]
    async with aclient(gateway) as c:
        text = await c.completions.create(model="fake-small", prompt="say hi now", extra_body={"fake_chunks": 2},
                                          extra_headers={"x-request-id": ids[0]})
        emb = await c.embeddings.create(model="fake-embed", input="hello big world",
                                        extra_headers={"x-request-id": ids[1]})
        images = await c.images.generate(model="fake-image", prompt="a cat", n=2,
                                         extra_headers={"x-request-id": ids[2]})
    assert text.choices[0].text == "Hello w1"
    assert text.usage is not None and (text.usage.prompt_tokens, text.usage.completion_tokens) == (3, 2)
    assert len(emb.data) == 1 and emb.data[0].embedding[:2] == [0.125, 0.25]
    assert emb.usage.prompt_tokens == 3
    assert images.data is not None and [i.url for i in images.data] == [
        "https://images.invalid/fake-0.png", "https://images.invalid/fake-1.png"]
    assert gateway.probe.context(ids[1]).usage.prompt_tokens == 3  # type: ignore[union-attr]
    assert gateway.probe.context(ids[2]).image_count == 2


def test_sdk_exception_classes(gateway: Gateway) -> None:
    with client(gateway) as c:
        with pytest.raises(openai.BadRequestError) as bad:
            c.chat.completions.create(model="fake-small", messages="not a list")  # type: ignore[arg-type]
        assert bad.value.body == {"message": "'messages' must be a non-empty list of message objects.",
                                  "type": "invalid_request_error", "param": "messages", "code": "invalid_value"}
        with pytest.raises(openai.NotFoundError) as missing:
            c.chat.completions.create(model="no-such-model", messages=MESSAGES)
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.APIStatusError) as big:
            c.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x" * 1_100_000}])
        assert big.value.status_code == 413 and big.value.code == "body_too_large"
        with pytest.raises(openai.InternalServerError) as failed:
            c.chat.completions.create(model="fake-small", messages=MESSAGES, extra_body={"fake_status": 500})
        assert failed.value.status_code == 502 and failed.value.code == "upstream_failed"
    with client(gateway, **{"x-test-byok": "sk-reject-member-key"}) as c:
        with pytest.raises(openai.AuthenticationError) as rejected:
            c.chat.completions.create(model="byok-gpt", messages=MESSAGES)
        assert rejected.value.code == "byok_key_rejected"


def test_sdk_timeout_is_504(start_gateway, litellm: services.Service) -> None:  # type: ignore[no-untyped-def]
    slow = start_gateway(litellm.url, upstream_timeout_seconds=0.5)
    with client(slow) as c, pytest.raises(openai.InternalServerError) as timeout:
        c.chat.completions.create(**chat(), extra_body={"fake_chunks": 2, "fake_delay_ms": 1000})
    assert timeout.value.status_code == 504 and timeout.value.code == "upstream_timeout"


async def test_async_completions_stream_with_usage(gateway: Gateway) -> None:
    rid = new_request_id()
    async with aclient(gateway) as c:
        stream = await c.completions.create(model="fake-small", prompt="say hi now", stream=True,
                                            stream_options={"include_usage": True}, extra_body={"fake_chunks": 3},
                                            extra_headers={"x-request-id": rid})
        chunks = [chunk async for chunk in stream]
    assert "".join(ch.choices[0].text or "" for ch in chunks if ch.choices) == "Hello w1 w2"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 3)
    assert sum(ch.usage is not None for ch in chunks) == 1
    ctx = gateway.probe.context(rid)
    assert ctx.meter.chunks == 3 and ctx.failure is None
