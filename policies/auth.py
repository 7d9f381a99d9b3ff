"""Authenticate: the `Authorization: Bearer <key>` header names a stored, unrevoked API key."""

from __future__ import annotations

import hashlib
from typing import Protocol

from proxy.config.settings import Secret
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext


class KeyLookup(Protocol):
    """`proxy.keycache.KeyCache` (or any lookup by SHA-256 hex hash that raises 503 when undecidable)."""

    async def get(self, key_hash: str) -> ApiKey | None: ...


def key_hash(key: Secret) -> str:
    """How API keys are stored: the SHA-256 hex digest of the key text."""
    return hashlib.sha256(key.reveal().encode()).hexdigest()


def bearer(headers: dict[str, str]) -> Secret | None:
    """The bearer token of an `Authorization` header (scheme case-insensitive), or None."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return Secret(token)


class Authenticate:
    """Sets `ctx.key`; 401 `invalid_api_key` (missing or unknown) or `revoked_api_key`."""

    reads_body = False  # runs before the body is read (proxy/gateway/passthrough.py)

    def __init__(self, keys: KeyLookup) -> None:
        self._keys = keys

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.api_key is None:
            ctx.api_key = bearer(ctx.headers)
        if ctx.api_key is None:
            raise ProxyError.invalid_api_key("Missing API key: send 'Authorization: Bearer <key>'.")
        key = await self._keys.get(key_hash(ctx.api_key))
        if key is None:
            raise ProxyError.invalid_api_key()
        if key.revoked:
            raise ProxyError.revoked_api_key()
        ctx.key = key
