"""A small OpenAI-compatible provider with real stream timing and deterministic usage.

Run: `python -m devstack.fake_provider --port N` (127.0.0.1 only). LiteLLM's `openai/...`
deployments point at it (litellm_config.yaml, http://127.0.0.1:8001 replaced by devstack).

Output (deterministic):
- A completion is `chunks` pieces: "Hello", " w1", " w2", ... (chunk i > 0 is f" w{i}"), one token
  each. `chunks` = `fake_chunks` (default 6), capped by `max_tokens` / `max_completion_tokens`
  (then finish_reason "length"). With `n` > 1 every choice carries the same text.
- completion_tokens = chunks * n.
- prompt_tokens = words: chat = sum over messages of len(text.split()) + 1 per message (text parts of
  list contents count too); completions = words of the prompt(s); embeddings = words of the input(s).
- Images: `n` (default 1) items in `data`, no usage.

Controls, read from the JSON body (LiteLLM forwards unknown params to the provider, capture 38):
`fake_chunks`, `fake_delay_ms` (between chunks; a non-stream answer waits chunks * delay),
`fake_fail_after` (abort the TCP connection after k chunks), `fake_no_usage` (no usage anywhere),
`fake_status` + `fake_error` (answer that HTTP status with an OpenAI error carrying that message),
`fake_tag` (names the stream in /_streams). `Authorization: Bearer sk-reject...` gets a 401
`invalid_api_key` error (a rejected BYOK key). Streams honour `stream_options.include_usage` like
OpenAI (a last `choices: []` chunk carrying usage).

Faults of a real provider (tests/e2e/test_upstream_faults.py), besides `fake_status` (an error answer)
and `fake_fail_after` (a dropped connection):
- `fake_stall_ms`: wait this long before answering at all, headers included (a slow provider);
- `fake_hang_after`: a stream stops sending after k chunks and keeps the connection open until the
  client leaves (a provider that hangs mid-answer);
- `fake_end_after`: a stream ends cleanly after k chunks, without a finish reason, usage or `[DONE]`
  (a provider that closes early);
- `fake_error_after`: a stream sends an OpenAI error event after k chunks and ends (a provider that
  fails mid-answer).

Introspection: `GET /_requests` lists every request (path, headers, JSON body); `GET /_streams` maps
each `fake_tag` to {chunks_sent, closed_early, finished}; `POST /_reset` clears both; `GET /_health`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

import orjson
from aiohttp import web

CREATED = 1700000000
MODELS = ("fake-small", "fake-medium", "fake-large", "gpt-4o-mini", "byok-gpt", "byok-only", "dall-e-3")
# the body fields that steer it (module doc); the demo policy.yaml forwards them (forward_params)
FAULTS = frozenset({"fake_stall_ms", "fake_hang_after", "fake_end_after", "fake_error_after"})
CONTROLS = frozenset({"fake_chunks", "fake_delay_ms", "fake_fail_after", "fake_no_usage", "fake_status", "fake_error",
                      "fake_tag", *FAULTS})
HANG_LIMIT = 600.0  # seconds a hanging stream waits for its client to leave


def words(value: Any) -> int:
    """Whitespace-separated words in a string, a list of strings, or a list of content parts."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(words(v.get("text", "") if isinstance(v, dict) else v) for v in value)
    return 0


def prompt_tokens(path: str, body: dict[str, Any]) -> int:
    if path.endswith("/chat/completions"):
        messages = body.get("messages") or []
        return sum(words(m.get("content")) + 1 for m in messages if isinstance(m, dict))
    if path.endswith("/completions"):
        return words(body.get("prompt", ""))
    return words(body.get("input", ""))


def chunk_texts(body: dict[str, Any]) -> tuple[list[str], str]:
    """The completion's pieces and its finish_reason."""
    count = int(body.get("fake_chunks", 6))
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "stop"
    if isinstance(cap, int) and 0 < cap < count:
        count, finish = cap, "length"
    return ["Hello" if i == 0 else f" w{i}" for i in range(count)], finish


def error_body(message: str, type_: str, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


class FakeProvider:
    """The provider's handlers and what it has seen; one instance per process, no module state."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.streams: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/images/generations", self.images)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/_health", self.health)
        app.router.add_get("/_requests", self.seen_requests)
        app.router.add_get("/_streams", self.seen_streams)
        app.router.add_post("/_reset", self.reset)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def seen_requests(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.requests), content_type="application/json")

    async def seen_streams(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.streams), content_type="application/json")

    async def reset(self, _: web.Request) -> web.Response:
        self.requests.clear()
        self.streams.clear()
        return web.json_response({"status": "reset"})

    async def models(self, _: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    async def _admit(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        """Record the request; return its body and an early error answer, if any."""
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append({"path": request.path, "headers": headers, "body": body})
        if not isinstance(body, dict):
            return {}, web.Response(status=400, body=error_body("body must be an object", "invalid_request_error",
                                                                None), content_type="application/json")
        if request.headers.get("authorization", "").startswith("Bearer sk-reject"):
            message = "Incorrect API key provided: sk-rej****. You can find your API key at the provider."
            return body, web.Response(status=401, body=error_body(message, "invalid_request_error",
                                                                  "invalid_api_key"), content_type="application/json")
        if "fake_status" in body:
            status = int(body["fake_status"])
            message = str(body.get("fake_error", f"fake provider error {status}"))
            headers = {"retry-after": "7"} if status == 429 else {}
            return body, web.Response(status=status, body=error_body(message, "fake_error", str(status)),
                                      content_type="application/json", headers=headers)
        return body, None

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if early is not None:
            return early
        await asyncio.sleep(float(body.get("fake_stall_ms", 0)) / 1000)
        chat = request.path.endswith("/chat/completions")
        texts, finish = chunk_texts(body)
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": prompt_tokens(request.path, body), "completion_tokens": len(texts) * n}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-fake{next(self._ids)}", "created": CREATED,
                "model": body.get("model", "unknown"), "system_fingerprint": "fp_fake"}
        delay = float(body.get("fake_delay_ms", 0)) / 1000
        if body.get("stream"):
            return await self._stream(request, body, base, texts, finish, n, usage, chat, delay)
        await asyncio.sleep(delay * len(texts))
        if body.get("fake_fail_after") is not None:
            assert request.transport is not None
            request.transport.abort()  # died before answering
            return web.Response(status=500)
        text = "".join(texts)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                       for i in range(n)]
        else:
            choices = [{"index": i, "text": text, "finish_reason": finish, "logprobs": None} for i in range(n)]
        answer: dict[str, Any] = {**base, "object": "chat.completion" if chat else "text_completion",
                                  "choices": choices}
        if not body.get("fake_no_usage"):
            answer["usage"] = usage
        return web.Response(body=orjson.dumps(answer), content_type="application/json", headers=_provider_headers())

    async def _stream(self, request: web.Request, body: dict[str, Any], base: dict[str, Any], texts: list[str],
                      finish: str, n: int, usage: dict[str, int], chat: bool, delay: float) -> web.StreamResponse:
        tag = str(body.get("fake_tag", f"untagged-{base['id']}"))
        fate = self.streams[tag] = {"chunks_sent": 0, "closed_early": False, "finished": False}
        fail_after = body.get("fake_fail_after")
        obj = "chat.completion.chunk" if chat else "text_completion"
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", **_provider_headers()})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            return b"data: " + orjson.dumps({**base, "object": obj, "choices": choices, **(extra or {})}) + b"\n\n"

        def piece(i: int, text: str, reason: str | None) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": text} if text == "Hello" else {"content": text}
                return {"index": i, "delta": delta if text else {}, "finish_reason": reason}
            return {"index": i, "text": text, "finish_reason": reason}

        try:
            for k, text in enumerate(texts):
                if k:
                    await asyncio.sleep(delay)
                if fail_after is not None and k >= int(fail_after):
                    fate["closed_early"] = True
                    assert request.transport is not None
                    request.transport.abort()  # a provider that dies mid-answer: no terminating chunk
                    return resp
                if await self._fault(request, resp, body, k, fate):
                    return resp
                await resp.write(event([piece(i, text, None) for i in range(n)]))
                fate["chunks_sent"] += 1
            await resp.write(event([piece(i, "", finish) for i in range(n)]))
            options = body.get("stream_options") or {}
            if options.get("include_usage") and not body.get("fake_no_usage"):
                await resp.write(event([], {"usage": usage}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            fate["finished"] = True
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            fate["closed_early"] = True
            raise
        return resp

    async def _fault(self, request: web.Request, resp: web.StreamResponse, body: dict[str, Any], sent: int,
                     fate: dict[str, Any]) -> bool:
        """Apply a mid-stream fault due after `sent` chunks (module doc); True when the stream is over."""
        if sent == body.get("fake_hang_after"):
            fate["hung"] = True
            deadline = asyncio.get_running_loop().time() + HANG_LIMIT
            while request.transport is not None and not request.transport.is_closing():
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            fate["closed_early"] = True
            return True
        if sent == body.get("fake_end_after"):
            await resp.write_eof()  # a clean end, but no finish reason, no usage, no [DONE]
            fate["closed_early"] = True
            return True
        if sent == body.get("fake_error_after"):
            error = {"message": "The provider failed mid-answer.", "type": "server_error", "param": None,
                     "code": "fake_midstream_error"}
            await resp.write(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
            await resp.write_eof()
            fate["closed_early"] = True
            return True
        return False

    async def embeddings(self, request: web.Request) -> web.Response:
        body, early = await self._admit(request)
        if early is not None:
            return early
        inputs = body.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.125 * (j + 1) for j in range(8)]}
                for i in range(len(items))]
        tokens = prompt_tokens(request.path, body)
        answer = {"object": "list", "data": data, "model": body.get("model", "unknown"),
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return web.Response(body=orjson.dumps(answer), content_type="application/json", headers=_provider_headers())

    async def images(self, request: web.Request) -> web.Response:
        body, early = await self._admit(request)
        if early is not None:
            return early
        n = int(body.get("n") or 1)
        data = [{"url": f"https://images.invalid/fake-{i}.png", "revised_prompt": body.get("prompt", "")}
                for i in range(n)]
        return web.Response(body=orjson.dumps({"created": CREATED, "data": data}), content_type="application/json",
                            headers=_provider_headers())


def _provider_headers() -> dict[str, str]:
    return {"x-ratelimit-remaining-requests": "4999", "openai-processing-ms": "1", "x-fake-provider": "1"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    web.run_app(FakeProvider().app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
