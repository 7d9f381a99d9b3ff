"""Client disconnect detection for one forwarded request.

uvicorn's `send` becomes a silent no-op once the client is gone (aesthetics.md §2.3), so the only
signal is `http.disconnect` from `receive()`, watched by a task while the request is forwarded. On
disconnect the watch records `ctx.failure = "client_disconnected"` and
- for a stream: closes the LiteLLM connection at once (`resp.close()`, not `release()`, so LiteLLM
  and the provider see the connection closed), or, before LiteLLM answered, ends the wait now;
- for a non-stream request: lets the upstream answer be read for at most `drain_seconds` more, so
  its real usage is known and settled (CONTRACT.md, Money).
Entered as `async with watch:` around the upstream exchange (an asyncio.timeout scope it reschedules).
"""

from __future__ import annotations

import asyncio

import aiohttp
from starlette.types import Receive

from proxy.gateway.context import RequestContext


class DisconnectWatch:
    __slots__ = ("_ctx", "_drain", "_scope", "_task", "disconnected", "done", "response")

    def __init__(self, ctx: RequestContext, drain_seconds: float) -> None:
        self._ctx = ctx
        self._drain = drain_seconds
        self._scope: asyncio.Timeout | None = None
        self._task: asyncio.Task[None] | None = None
        self.response: aiohttp.ClientResponse | None = None
        self.disconnected = False
        self.done = False  # the answer is being completed: a disconnect from now on is normal

    def start(self, receive: Receive) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def __aenter__(self) -> DisconnectWatch:
        self._scope = asyncio.timeout(None)
        await self._scope.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        scope, self._scope = self._scope, None
        assert scope is not None
        await scope.__aexit__(*exc)  # type: ignore[arg-type]
        return None

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if self.done:
            return
        self.disconnected = True
        self._ctx.failure = self._ctx.failure or "client_disconnected"
        now = asyncio.get_running_loop().time()
        if self._ctx.stream:
            if self.response is not None:
                self.response.close()
            elif self._scope is not None:
                self._scope.reschedule(now)
        elif self._scope is not None:
            self._scope.reschedule(now + self._drain)
