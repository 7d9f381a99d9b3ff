"""GET /models, /models/{id}, /models/categorized for callers, filtered to what the caller may use.

Each model object says which power levels list it (`power_levels`). A model is listed when the org's tier
allows it and either the platform can serve it at a price (priced, and no deployment requires a member's
key) or the caller has an enabled BYOK key (their own or the org's) for its provider and all its
deployments take members' keys. Categorized: `byok` holds the listed models whose deployments all take
members' keys, `platform` the rest.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from proxy.api.answers import CategorizedModels, ModelList
from proxy.api.answers import Model as ModelObject
from proxy.api.jsonapi import json_response
from proxy.api.stores import DirectoryAdmin
from proxy.caller.common import Identify, both, membership
from proxy.config.catalogue import Catalogue, Model
from proxy.config.live import LiveConfig
from proxy.config.policy import PolicyConfig
from proxy.directory.scopes import allows_model
from proxy.directory.types import Membership
from proxy.errors import ProxyError


def providers_of(catalogue: Catalogue) -> set[str]:
    """Every provider named by a deployment: the only providers a BYOK key may be stored for."""
    return catalogue.providers()


def tier_allows(policy: PolicyConfig, tier_name: str, model: str) -> bool:
    """The policy file's rule; an org whose tier the file does not know may use nothing (fail closed)."""
    tier = policy.tier(tier_name)
    return tier is not None and tier.allows(model)


def usable(model: Model, member: Membership, keyed: set[str], policy: PolicyConfig) -> bool:
    """May this member use `model`? `keyed` = providers with an enabled key of theirs or the org's.
    Mirrors the chain: InjectProviderKey uses a key only on `byok_allowed` models, ReserveCredits
    refuses an unpriced model without one, and a `byok_required` model needs one."""
    if not tier_allows(policy, member.org_tier, model.name):
        return False
    if model.priced() and not model.byok_required:
        return True
    return model.byok_allowed and model.provider in keyed


def model_object(model: Model, created: int, policy: PolicyConfig) -> ModelObject:
    """The model object; `power_levels` names the levels that list the model (policy file order), so a
    caller can see what `auto` may pick at each level."""
    levels = [level.name for level in policy.power_levels if model.name in level.models]
    return ModelObject(id=model.name, created=created, owned_by=model.provider, power_levels=levels)


def model_routes(
    *,
    identify: Identify,
    directory: DirectoryAdmin,
    config: LiveConfig,
    created: int,
) -> list[BaseRoute]:
    """GET /models (OpenAI list shape), /models/categorized, /models/{id} (404 model_not_found), from the
    configuration current when the request arrives."""

    async def visible(request: Request) -> tuple[list[Model], PolicyConfig]:
        ctx = await identify(request)
        member = membership(ctx)
        snapshot = config.current
        rows = await directory.list_provider_keys(member.org_id, member.user_id)
        keyed = {str(row["provider"]) for row in rows if row.get("enabled")}
        models = snapshot.catalogue.models.values()  # config order, then what wildcard routes expand to
        return [m for m in models if usable(m, member, keyed, snapshot.policy) and allows_model(ctx.key, m.name)
                ], snapshot.policy

    async def list_models(request: Request) -> Response:
        shown, policy = await visible(request)
        return json_response(ModelList(data=[model_object(m, created, policy) for m in shown]))

    async def categorized(request: Request) -> Response:
        shown, policy = await visible(request)
        return json_response(CategorizedModels(
            platform=[model_object(m, created, policy) for m in shown if not m.byok_allowed],
            byok=[model_object(m, created, policy) for m in shown if m.byok_allowed],
        ))

    async def one_model(request: Request) -> Response:
        model_id: str = request.path_params["model_id"]
        shown, policy = await visible(request)
        for model in shown:
            if model.name == model_id:
                return json_response(model_object(model, created, policy))
        message = f"The model '{model_id[:200]}' does not exist or is not available to you."
        raise ProxyError.not_found("model_not_found", message)

    return [
        *both("/models", list_models, ["GET"]),
        *both("/models/categorized", categorized, ["GET"]),
        *both("/models/{model_id:path}", one_model, ["GET"]),
    ]
