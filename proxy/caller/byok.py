"""The BYOK key endpoints: store (encrypted), list (masked), delete, toggle, test, usage.

`scope` is "user" (the caller's own key in the active org, the default) or "org" (the org's key,
org admins only: 403 otherwise; each change of it is an admin action, audited with its actor). A
member's enabled key beats the org's. The key itself never
leaves this module except encrypted to the directory and, for a test, to LiteLLM as the body's
top-level `api_key` (litellm.md §3); answers show only a mask of its last four characters.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from proxy.api.answers import Listing, ProviderKey, ProviderKeyRemoved, ProviderKeyTest, Scope
from proxy.api.bodies import PutProviderKey, ToggleProviderKey
from proxy.api.decode import BodyReader
from proxy.api.jsonapi import json_response
from proxy.api.stores import DirectoryAdmin, LedgerAdmin
from proxy.caller.common import Identify, both, membership, require_scope, scope_of
from proxy.caller.models import providers_of
from proxy.config.catalogue import Catalogue
from proxy.config.live import LiveConfig
from proxy.config.settings import Secret
from proxy.db.pool import Row
from proxy.directory.crypto import KeyBox, UndecryptableKey, last4, mask
from proxy.directory.types import Directory, Membership
from proxy.errors import ProxyError

# (model, key) -> (status, client-safe message): a one-token call through LiteLLM, not billed
Probe = Callable[[str, Secret], Awaitable[tuple[int, str]]]
MAX_KEY_CHARS = 4096
MIN_KEY_CHARS = 8

log = logging.getLogger("creditgate.byok")


class ByokDirectory(DirectoryAdmin, Directory, Protocol):
    """PgDirectory: the admin side (store, list, delete, toggle) and the hot path's key lookup."""


def key_view(row: Row) -> ProviderKey:
    """A stored key as answers show it: never the key or its ciphertext."""
    return ProviderKey(provider=row["provider"], scope=row["scope"], masked_key=mask(str(row.get("last4") or "")),
                       enabled=bool(row["enabled"]), created_at=row.get("created_at"), updated_at=row.get("updated_at"))


def owner_of(member: Membership, scope: str) -> str:
    return member.org_id if scope == "org" else member.user_id


def validate_key(value: str) -> Secret:
    """A provider API key (a string, as its declaration says): trimmed, then printable ASCII without
    spaces (it travels in an HTTP header). The error never echoes it."""
    key = value.strip()
    if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
        raise ProxyError.invalid_value("api_key", f"'api_key' must be {MIN_KEY_CHARS} to {MAX_KEY_CHARS} characters.")
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise ProxyError.invalid_value("api_key", "'api_key' must be printable ASCII without spaces.")
    return Secret(key)


def byok_routes(
    *,
    identify: Identify,
    ledger: LedgerAdmin,
    directory: ByokDirectory,
    config: LiveConfig,
    keybox: KeyBox,
    probe: Probe,
) -> list[BaseRoute]:
    """The BYOK routes under /byok/keys; keys are sealed and opened with `keybox` (proxy/directory/crypto.py).
    The providers a key may be stored for are those of the configuration current at the request."""
    vocabulary = _Providers(config)

    def provider_param(value: str, param: str = "provider") -> str:
        providers = vocabulary.providers()
        if value.strip().lower() not in providers:
            known = ", ".join(sorted(providers))
            raise ProxyError.invalid_value(param, f"Unknown provider; expected one of: {known}.")
        return value.strip().lower()

    async def put_key(request: Request) -> Response:
        member = membership(await identify(request))
        body = await vocabulary.bodies().read(request, PutProviderKey)
        provider, key, scope = provider_param(body.provider), validate_key(body.api_key), body.scope
        require_scope(scope, member)
        row = await directory.put_provider_key(
            member.org_id, scope, owner_of(member, scope), provider, keybox.encrypt(key), last4(key)
        )
        log.info("byok key stored", extra={"org_id": member.org_id, "provider": provider, "scope": scope})
        await audited(member, scope, "byok.put", provider)
        return json_response(key_view(row), status=201)

    async def list_keys(request: Request) -> Response:
        member = membership(await identify(request))
        rows = await directory.list_provider_keys(member.org_id, member.user_id)
        views = [key_view(row) for row in rows]
        mine = {v.provider for v in views if v.scope == "user" and v.enabled}
        for view in views:
            # the key a request would use: the member's enabled key beats the org's
            view.active = view.enabled and (view.scope == "user" or view.provider not in mine)
        views.sort(key=lambda v: (v.provider, v.scope != "user"))
        return json_response(Listing(data=views, has_more=False))

    async def delete_key(request: Request) -> Response:
        member, scope, provider = await target(request)
        if not await directory.delete_provider_key(member.org_id, scope, owner_of(member, scope), provider):
            raise not_stored(provider, scope)
        log.info("byok key deleted", extra={"org_id": member.org_id, "provider": provider, "scope": scope})
        await audited(member, scope, "byok.delete", provider)
        return json_response(ProviderKeyRemoved(provider=provider, scope=scope, deleted=True))

    async def toggle_key(request: Request) -> Response:
        member, scope, provider = await target(request)
        enabled = (await vocabulary.bodies().read(request, ToggleProviderKey)).enabled
        row = await directory.toggle_provider_key(member.org_id, scope, owner_of(member, scope), provider, enabled)
        if row is None:
            raise not_stored(provider, scope)
        await audited(member, scope, "byok.toggle", provider, enabled=enabled)
        return json_response(key_view(row))

    async def test_key(request: Request) -> Response:
        member, scope, provider = await target(request)
        stored = await directory.provider_keys(member.org_id, member.user_id, provider)
        match = next((k for k in stored if k.scope == scope), None)
        if match is None:
            raise not_stored(provider, scope)
        model = probe_model(config.current.catalogue, provider)
        if model is None:
            raise ProxyError.invalid_value("provider", f"No model of provider '{provider}' takes members' keys.")
        try:
            key = keybox.decrypt(match.ciphertext)
        except UndecryptableKey:
            raise ProxyError(409, "conflict_error", "byok_key_unreadable",
                             "The stored key can no longer be decrypted; store it again.") from None
        status, message = await probe(model, key)
        return json_response(ProviderKeyTest(ok=200 <= status < 300, status=status, message=message))

    async def key_usage(request: Request) -> Response:
        member, scope, provider = await target(request)
        row = await ledger.provider_usage(member.org_id, member.user_id if scope == "user" else None, provider)
        return json_response({"provider": provider, "scope": scope, **row})

    async def audited(member: Membership, scope: str, action: str, provider: str, **detail: object) -> None:
        """The org's key is the org admin's to change: recorded in the org's audit log (a member's own
        key is theirs alone)."""
        if scope == "org":
            await directory.audit(member.user_id, action, member.org_id, provider, {"scope": scope, **detail})

    async def target(request: Request) -> tuple[Membership, Scope, str]:
        member = membership(await identify(request))
        scope = scope_of(request.query_params, member)
        return member, scope, provider_param(request.path_params["provider"])

    return [
        *both("/byok/keys", put_key, ["POST"]),
        *both("/byok/keys", list_keys, ["GET"]),
        *both("/byok/keys/{provider}", delete_key, ["DELETE"]),
        *both("/byok/keys/{provider}/toggle", toggle_key, ["POST"]),
        *both("/byok/keys/{provider}/test", test_key, ["POST"]),
        *both("/byok/keys/{provider}/usage", key_usage, ["GET"]),
    ]


class _Providers:
    """The BYOK providers of the current catalogue and a body reader that knows them, rebuilt only when a
    reload swapped the catalogue."""

    def __init__(self, config: LiveConfig) -> None:
        self._config = config
        self._catalogue: Catalogue | None = None
        self._providers: set[str] = set()
        self._bodies = BodyReader(providers=())

    def _refresh(self) -> None:
        catalogue = self._config.current.catalogue
        if catalogue is not self._catalogue:
            self._catalogue, self._providers = catalogue, providers_of(catalogue)
            self._bodies = BodyReader(providers=self._providers)

    def providers(self) -> set[str]:
        self._refresh()
        return self._providers

    def bodies(self) -> BodyReader:
        self._refresh()
        return self._bodies


def not_stored(provider: str, scope: str) -> ProxyError:
    return ProxyError.not_found("byok_key_not_found", f"No {scope} key is stored for provider '{provider}'.")


def probe_model(catalogue: Catalogue, provider: str) -> str | None:
    """The first model served only by `provider` deployments that all take members' keys, so
    LiteLLM cannot route the test (and the key) to another provider or to the platform's key."""
    for model in catalogue.models.values():
        if model.byok_allowed and model.provider == provider:
            return model.name
    return None
