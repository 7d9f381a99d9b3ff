"""/healthz and /readyz: ready when every check answers in time; a check may report "degraded" (Redis)
without failing readiness; a failing or slow check makes it 503 and names itself."""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request

from proxy.ops.health import Readiness, healthz

REQUEST = Request({"type": "http", "method": "GET", "path": "/readyz", "headers": [], "query_string": b""})


async def litellm() -> None:
    return None


async def redis() -> str:
    return "degraded"


async def postgres() -> None:
    raise ConnectionRefusedError("down")


async def slow() -> None:
    await asyncio.sleep(5)


async def test_ready_with_a_degraded_dependency() -> None:
    answer = await Readiness((litellm, redis)).endpoint(REQUEST)
    assert (answer.status_code, orjson.loads(answer.body)) == (
        200, {"status": "ready", "checks": {"litellm": "ok", "redis": "degraded"}})


async def test_a_failing_or_slow_check_makes_it_unavailable() -> None:
    answer = await Readiness((litellm, postgres, slow), timeout=0.1).endpoint(REQUEST)
    assert (answer.status_code, orjson.loads(answer.body)) == (
        503, {"status": "unavailable", "checks": {"litellm": "ok", "postgres": "failed", "slow": "failed"}})


async def test_liveness_needs_nothing() -> None:
    answer = await healthz(REQUEST)
    assert (answer.status_code, orjson.loads(answer.body)) == (200, {"status": "ok"})
