"""InjectProviderKey: the member's (else the org's) own provider key, for models that take one."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from proxy.config.catalogue import Catalogue
from proxy.directory.crypto import KeyBox, UndecryptableKey
from proxy.directory.types import Directory, StoredProviderKey
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext

log = logging.getLogger("creditgate.policies")


class InjectProviderKey:
    """Sets ctx.byok_key and ctx.byok when every deployment of the resolved model takes members' keys
    (`model_info.byok` optional or required: otherwise LiteLLM could route the key to a deployment that
    must not get it). The member's enabled key beats the org's enabled key. A `byok: required` model
    without a usable key is 403 `byok_key_required` before anything is forwarded. The passthrough puts
    the key at the top level of the body as `api_key`."""

    def __init__(self, directory: Directory, catalogue: Catalogue, keybox: KeyBox) -> None:
        self._directory = directory
        self._catalogue = catalogue  # for a request no PinConfig pinned (it reads only the catalogue)
        self._keybox = keybox

    async def __call__(self, ctx: RequestContext) -> None:
        member = ctx.require_membership()
        catalogue = ctx.config.catalogue if ctx.config is not None else self._catalogue
        model = catalogue.get(ctx.model or "")
        if model is None:
            raise RuntimeError("RewriteModel must run before InjectProviderKey")
        if model.byok_allowed:
            try:
                stored = await self._directory.provider_keys(member.org_id, member.user_id, model.provider)
            except ProxyError:
                raise
            except Exception as exc:  # fail closed: without the directory we cannot tell whose key to use
                log.error("provider key lookup failed: %s", type(exc).__name__)
                raise ProxyError.ledger_unavailable() from None
            for candidate in _preferred(stored, model.provider):
                try:
                    ctx.byok_key = self._keybox.decrypt(candidate.ciphertext)
                except UndecryptableKey:
                    log.error("a stored %s key (scope %s) cannot be decrypted", candidate.provider, candidate.scope)
                    continue
                ctx.byok = True
                return
        if model.byok_required:
            raise ProxyError.permission(
                "byok_key_required",
                f"The model '{model.name}' runs only with your own {model.provider} key: add one at /v1/byok/keys.",
            )


def _preferred(stored: Sequence[StoredProviderKey], provider: str) -> list[StoredProviderKey]:
    """Enabled keys for `provider`, the member's own first, then the org's."""
    usable = [k for k in stored if k.enabled and k.provider == provider]
    return sorted(usable, key=lambda k: 0 if k.scope == "user" else 1)
