"""A usage-event receiver for the export tests, served by a real uvicorn on 127.0.0.1: it checks every
delivery's signature, deduplicates by (external_subscription_id, transaction_id) as a billing system does,
and misbehaves on cue, per transaction id and attempt: "fail" (500), "stall" (stores the event, then
answers only after the sender gave up: a lost acknowledgement), "reject" (400), else "ok" (200)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

from devstack import services
from proxy.config.settings import Secret
from proxy.export.events import verify


@dataclass
class Delivery:
    transaction_id: str
    code: str
    headers: dict[str, str]
    event: dict[str, Any]
    signed: bool  # the signature verified with the receiver's secret
    action: str
    at: float  # time.time() when it arrived


@dataclass
class Receiver:
    secret: Secret | None
    script: dict[str, list[str]] = field(default_factory=dict)
    stall_seconds: float = 1.5
    deliveries: list[Delivery] = field(default_factory=list)
    kept: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # deduplicated events
    url: str = ""

    def attempts(self, transaction_id: str) -> int:
        return sum(d.transaction_id == transaction_id for d in self.deliveries)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        payload = b"".join(chunks)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        event = orjson.loads(payload)["event"]
        tid = event["transaction_id"]
        plan = self.script.get(tid, [])
        attempt = self.attempts(tid)
        action = plan[attempt] if attempt < len(plan) else "ok"
        signed = self.secret is not None and verify(self.secret, headers.get("x-creditgate-signature", ""),
                                                    payload, int(time.time()))
        self.deliveries.append(Delivery(tid, event["code"], headers, event, signed, action, time.time()))
        status = {"fail": 500, "reject": 400}.get(action, 200)
        if status == 200:
            self.kept.setdefault((event["external_subscription_id"], tid), event)
        if action == "stall":
            await asyncio.sleep(self.stall_seconds)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


def _server(receiver: Receiver) -> uvicorn.Server:
    port = services.free_port()
    receiver.url = f"http://127.0.0.1:{port}/events?token=receiver-token"
    return uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=port, log_level="warning",
                                         lifespan="off"))


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    """The receiver on this event loop."""
    server = _server(receiver)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


@contextmanager
def serving_in_thread(receiver: Receiver) -> Iterator[Receiver]:
    """The receiver on its own thread (for tests that drive a gateway process synchronously)."""
    server = _server(receiver)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        thread.join(10)
