"""What a scoped API key may do (issue 12): the routes it may call, whether it may only read, the models it may
use. Its spend limit is the ledger's business (0008_scoped_keys.sql: the reserve's third bound).

An unscoped key (`routes` and `models` null, not read-only) may do whatever its member may. A scope only ever
narrows: the org's tier still bounds the models, the member's role still bounds the admin routes.

Routes are path prefixes on segment boundaries: "/v1/requests" allows `GET /v1/requests/req_1` and not
`/v1/requestsX`; "/admin" allows every admin route the member's role allows. Both client prefixes are the same
route: "/api/v1/llm/chat/completions" is stored and matched as "/v1/chat/completions". A read-only key may
use GET (and HEAD) only, on any route its `routes` allow.

The checks run where each kind of route authenticates: the gateway chain (policies/auth.py), the caller's
routes (proxy/caller/common.py), the admin API (proxy/admin/auth.py) and the console.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from proxy.config.policy import Tier
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError

MAX_ENTRIES = 32  # routes or models on one key
MAX_LENGTH = 128  # characters of one route or model name
READS = frozenset({"GET", "HEAD"})
_ALIAS, _CANONICAL = "/api/v1/llm", "/v1"
# a route: "/" then path segments of URL-safe characters (no query, no dot segments, no doubled slash)
_ROUTE = re.compile(r"/[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-.]+)*")
_MODEL = re.compile(r"[A-Za-z0-9_\-.:/@+]+")


def canonical_path(path: str) -> str:
    """The path with the alias client prefix replaced by `/v1`."""
    if path == _ALIAS or path.startswith(_ALIAS + "/"):
        return _CANONICAL + path[len(_ALIAS):]
    return path


def check_route(key: ApiKey | None, method: str, path: str) -> None:
    """403 `read_only_key` or `route_not_allowed` when `key`'s scope does not cover `method path`."""
    if key is None:
        return
    if key.read_only and method.upper() not in READS:
        raise ProxyError.permission("read_only_key", "This API key is read-only: it may only read (GET).")
    if key.routes is None:
        return
    wanted = canonical_path(path)
    if not any(wanted == route or wanted.startswith(route + "/") for route in key.routes):
        raise ProxyError.permission("route_not_allowed", f"This API key may not call {wanted[:160]}.")


def allows_model(key: ApiKey | None, model: str) -> bool:
    return key is None or key.models is None or model in key.models


def check_model(key: ApiKey | None, model: str) -> None:
    """403 `model_not_allowed` when `key` may not use `model` (the name asked for, or the one chosen)."""
    if not allows_model(key, model):
        raise ProxyError.permission("model_not_allowed", f"This API key may not use the model '{model[:128]}'.")


def narrow(tier: Tier, key: ApiKey | None) -> Tier:
    """The tier as this key sees it: only the models both allow (`auto` and downgrades choose among them)."""
    if key is None or key.models is None:
        return tier
    return dataclasses.replace(tier, models=tuple(m for m in key.models if tier.allows(m)))


def parse_routes(values: Sequence[str] | None, param: str = "routes") -> tuple[str, ...] | None:
    """Routes as stored: canonical, without a trailing slash, deduplicated in order; 400 otherwise."""
    if values is None:
        return None
    found: list[str] = []
    for raw in _bounded(values, param):
        route = canonical_path(raw.rstrip("/") if raw != "/" else raw)
        if not _ROUTE.fullmatch(route) or "/../" in route + "/" or "/./" in route + "/":
            raise ProxyError.invalid_value(param, f"'{param}' entries must be paths like '/v1/chat/completions'.")
        found.append(route)
    return tuple(dict.fromkeys(found))


def parse_models(values: Sequence[str] | None, param: str = "models") -> tuple[str, ...] | None:
    """Model names as stored, deduplicated in order; 400 for a name no catalogue could hold."""
    if values is None:
        return None
    found = []
    for name in _bounded(values, param):
        if not _MODEL.fullmatch(name):
            raise ProxyError.invalid_value(param, f"'{param}' entries must be model names.")
        found.append(name)
    return tuple(dict.fromkeys(found))


def _bounded(values: Sequence[str], param: str) -> Sequence[str]:
    if len(values) > MAX_ENTRIES or any(not isinstance(v, str) or not 0 < len(v) <= MAX_LENGTH for v in values):
        raise ProxyError.invalid_value(
            param, f"'{param}' must be a list of at most {MAX_ENTRIES} strings of 1 to {MAX_LENGTH} characters.")
    return values
