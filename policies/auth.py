"""Authenticate: the `Authorization: Bearer <key>` header names a stored, unrevoked API key whose scope
(proxy/directory/scopes.py) covers the route."""

from __future__ import annotations

from typing import Protocol

from proxy.config.settings import Secret
from proxy.directory.apikeys import hash_key
from proxy.directory.scopes import check_route
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from proxy.gateway.headers import bearer_token


class KeyLookup(Protocol):
    """`proxy.keycache.KeyCache` (or any lookup by SHA-256 hex hash that raises 503 when undecidable)."""

    async def get(self, key_hash: str) -> ApiKey | None: ...


class Authenticate:
    """Sets `ctx.key`; 401 `invalid_api_key` (missing or unknown) or `revoked_api_key`."""

    reads_body = False  # runs before the body is read (proxy/gateway/passthrough.py)

    def __init__(self, keys: KeyLookup) -> None:
        self._keys = keys

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.api_key is None:
            token = bearer_token(ctx.headers.get("authorization"))
            ctx.api_key = Secret(token) if token else None
        if ctx.api_key is None:
            raise ProxyError.invalid_api_key("Missing API key: send 'Authorization: Bearer <key>'.")
        key = await self._keys.get(hash_key(ctx.api_key.reveal()))
        if key is None:
            raise ProxyError.invalid_api_key()
        if key.revoked:
            raise ProxyError.revoked_api_key()
        if ctx.route != "caller":  # a model route, always a POST (the caller's routes check their own path)
            check_route(key, "POST", "/v1/" + ctx.route)
        ctx.key = key
