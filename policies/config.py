"""PinConfig: a request runs, is held and is settled under the configuration current at its start.

The first policy of the chain: one attribute read (`LiveConfig.current`) stored on the context. Every
later policy reads the policy file and the catalogue from `ctx.config`, and the settlement prices the
answer from the same snapshot, so a reload (proxy/config/reload.py) never changes the price of a
request in flight: it is held and settled at the prices, markup and multiplier it started with, and its
hold and usage record carry that snapshot's price version.
"""

from __future__ import annotations

from proxy.config.live import LiveConfig, Snapshot
from proxy.gateway.context import RequestContext


class PinConfig:
    reads_body = False  # runs before the body is read

    def __init__(self, live: LiveConfig) -> None:
        self._live = live

    async def __call__(self, ctx: RequestContext) -> None:
        ctx.config = self._live.current


def pinned(ctx: RequestContext, fallback: Snapshot) -> Snapshot:
    """The request's snapshot; a request no PinConfig pinned (a chain built without a live configuration,
    as tests build one policy) is pinned to `fallback`, the configuration the policy was built with."""
    if ctx.config is None:
        ctx.config = fallback
    return ctx.config

