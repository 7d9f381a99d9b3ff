"""GET /models, /models/{id}, /models/categorized for callers, filtered to what the caller may use.

A model is listed when the org's tier allows it and either the platform can serve it at a price
(priced, and not BYOK-only) or the caller has an enabled BYOK key (their own or the org's) for the
provider of a deployment that takes members' keys. Categorized: `byok` holds the listed models
whose deployments all take members' keys, `platform` the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from proxy.caller_common import Identify, both, json_response, membership
from proxy.context import Membership
from proxy.errors import ProxyError
from proxy.stores import DirectoryAdmin

TierAllows = Callable[[str, str], bool]  # (tier, model name) -> allowed
BYOK_MODES = ("optional", "required")


@dataclass(frozen=True, slots=True)
class DeploymentEntry:
    provider: str
    byok: str  # "none" | "optional" | "required"

    @property
    def takes_member_keys(self) -> bool:
        return self.byok in BYOK_MODES


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model name as callers see it: its deployments and whether the platform has its price."""

    name: str
    deployments: tuple[DeploymentEntry, ...]
    priced: bool

    @property
    def all_byok(self) -> bool:
        return bool(self.deployments) and all(d.takes_member_keys for d in self.deployments)

    @property
    def byok_required(self) -> bool:
        return bool(self.deployments) and all(d.byok == "required" for d in self.deployments)

    @property
    def owned_by(self) -> str:
        return self.deployments[0].provider if self.deployments else "creditgate"

    def byok_providers(self) -> set[str]:
        return {d.provider for d in self.deployments if d.takes_member_keys}


def providers_of(models: Iterable[ModelEntry]) -> set[str]:
    """Every provider named by a deployment: the only providers a BYOK key may be stored for."""
    return {d.provider for m in models for d in m.deployments}


def entries_from_catalogue(catalogue: Any) -> tuple[ModelEntry, ...]:
    """Adapter from proxy.pricing.Catalogue (duck-typed so this module does not pin its internals)."""
    return tuple(catalogue_entries(catalogue))


def catalogue_entries(catalogue: Any) -> Iterable[ModelEntry]:
    for name, deployments in catalogue.models.items():
        entries = tuple(DeploymentEntry(provider=d.provider, byok=d.byok) for d in deployments)
        yield ModelEntry(name=name, deployments=entries, priced=bool(catalogue.priced(name)))


def usable(model: ModelEntry, member: Membership, keyed: set[str], tier_allows: TierAllows) -> bool:
    """May this member use `model`? `keyed` = providers with an enabled key of theirs or the org's."""
    if not tier_allows(member.org_tier, model.name):
        return False
    if model.priced and not model.byok_required:
        return True
    return bool(model.byok_providers() & keyed)


def model_object(model: ModelEntry, created: int) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": created, "owned_by": model.owned_by}


def model_routes(
    *,
    identify: Identify,
    directory: DirectoryAdmin,
    models: Sequence[ModelEntry],
    tier_allows: TierAllows,
    created: int,
) -> list[BaseRoute]:
    """GET /models (OpenAI list shape), /models/categorized, /models/{id} (404 model_not_found)."""

    async def visible(request: Request) -> list[ModelEntry]:
        member = membership(await identify(request))
        rows = await directory.list_provider_keys(member.org_id, member.user_id)
        keyed = {str(row["provider"]) for row in rows if row.get("enabled")}
        return [m for m in models if usable(m, member, keyed, tier_allows)]

    async def list_models(request: Request) -> Response:
        data = [model_object(m, created) for m in await visible(request)]
        return json_response({"object": "list", "data": data})

    async def categorized(request: Request) -> Response:
        shown = await visible(request)
        return json_response({
            "platform": [model_object(m, created) for m in shown if not m.all_byok],
            "byok": [model_object(m, created) for m in shown if m.all_byok],
        })

    async def one_model(request: Request) -> Response:
        model_id: str = request.path_params["model_id"]
        for model in await visible(request):
            if model.name == model_id:
                return json_response(model_object(model, created))
        message = f"The model '{model_id[:200]}' does not exist or is not available to you."
        raise ProxyError.not_found("model_not_found", message)

    return [
        *both("/models", list_models, ["GET"]),
        *both("/models/categorized", categorized, ["GET"]),
        *both("/models/{model_id:path}", one_model, ["GET"]),
    ]
