"""Liveness, readiness and the metrics endpoint.

`/healthz` answers while the process serves requests. `/readyz` checks LiteLLM's
`/health/liveliness` (never `/health`, which makes a paid call to every deployment: litellm.md §1)
and every ready check the composition root adds (PostgreSQL, Redis); 503 names what failed, never
why (an error text could carry a DSN).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.ops.metrics import Metrics

# A check raises when not ready; it may return "degraded" for a dependency the gateway can do without
# (Redis: keys are then read from PostgreSQL, money is unaffected), reported but not failing readiness.
ReadyCheck = Callable[[], Awaitable[str | None]]
log = logging.getLogger("creditgate.health")


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


class Readiness:
    """GET /readyz: 200 when every check (LiteLLM, PostgreSQL, Redis: each named by its function) answers
    within `timeout` seconds, else 503."""

    def __init__(self, checks: Sequence[ReadyCheck], timeout: float = 2.0) -> None:
        self.checks = list(checks)
        self.timeout = timeout

    async def _run(self, name: str, check: ReadyCheck) -> tuple[str, str]:
        try:
            status = await asyncio.wait_for(check(), self.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; logged, not shown
            log.warning("readiness check failed", extra={"check": name, "error": type(exc).__name__})
            return name, "failed"
        return name, status or "ok"

    async def endpoint(self, _: Request) -> Response:
        named = [(getattr(c, "__name__", f"check{i}"), c) for i, c in enumerate(self.checks)]
        results = dict(await asyncio.gather(*(self._run(n, c) for n, c in named)))
        ready = all(v != "failed" for v in results.values())
        return JSONResponse({"status": "ready" if ready else "unavailable", "checks": results},
                            status_code=200 if ready else 503)


def metrics_endpoint(metrics: Metrics) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(_: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return endpoint
