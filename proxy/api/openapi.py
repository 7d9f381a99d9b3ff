"""GET /openapi.json (OpenAPI 3.1), generated from the route table (proxy/api/operations.py) and the
body declarations (proxy/api/bodies.py, proxy/api/answers.py); GET /docs browses it (proxy/api/docs.py).

msgspec writes the schemas (JSON Schema 2020-12, as OpenAPI 3.1 embeds it); the tier and power-level
vocabularies of the policy file become `enum`s where a declaration's `Rule` names them. Every
operation has its operationId, its security (the admin token, an org admin's API key, or any API key),
its request and answer bodies with an example each, and its errors typed as the contract's error body.
The document is built once per app and served as fixed bytes.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Collection, Iterator
from typing import Any

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.api.answers import Error
from proxy.api.decode import rules
from proxy.api.docs import docs_routes
from proxy.api.examples import example
from proxy.api.jsonapi import MAX_BODY_BYTES
from proxy.api.operations import OPERATIONS, PATH_PARAMS, Operation, Schema
from proxy.errors import ProxyError

REF = "#/components/schemas/{name}"
# each error status: what it means, and an example rendered by the one error type itself
ERRORS: dict[int, tuple[str, ProxyError]] = {
    400: ("Invalid request: invalid_json, missing_field or invalid_value, `param` naming the field.",
          ProxyError.missing_field("tier")),
    401: ("Missing, invalid or revoked credentials.", ProxyError.invalid_api_key()),
    402: ("Insufficient credits.", ProxyError.insufficient_credits("org_pool_exhausted", "The org's pool is empty.")),
    403: ("Not permitted.", ProxyError.permission("not_a_member", "You are not a member of this organization.")),
    404: ("Not found.", ProxyError.not_found("org_not_found", "Unknown organization.")),
    409: ("Conflict.", ProxyError.request_id_in_use("req-1")),
    410: ("Gone.", ProxyError.purchases_disabled()),
    413: ("The body is past the route's limit.", ProxyError.body_too_large(MAX_BODY_BYTES)),
    429: ("Rate limited: retry after Retry-After seconds.", ProxyError.rate_limited(2)),
    502: ("The model service failed.", ProxyError.upstream_failed()),
    503: ("Unavailable; retry later.", ProxyError.ledger_unavailable()),
    504: ("The model service did not answer in time.", ProxyError.upstream_timeout()),
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "operator": [{"adminToken": []}], "org_admin": [{"adminToken": []}, {"apiKey": []}], "api_key": [{"apiKey": []}]}
_PATH_PARAM = re.compile(r"{(\w+)}")


def declared(operation: Operation) -> Iterator[Any]:
    """The declared bodies of `operation` (structs and listings of them; raw schemas are not)."""
    for body in (operation.body, *operation.answers.values()):
        if body is not None and not isinstance(body, dict):
            yield body


def structs(tp: Any) -> Iterator[type[msgspec.Struct]]:
    """Every struct in a declared type, nested ones included."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        yield tp
        for info in msgspec.structs.fields(tp):
            yield from structs(info.type)
    for arg in typing.get_args(tp):
        yield from structs(arg)


def _with_vocabularies(components: dict[str, Schema], vocabularies: dict[str, list[str]]) -> None:
    """The configured values as `enum`s of the fields whose Rule names a vocabulary."""
    seen = {s for op in OPERATIONS for body in declared(op) for s in structs(body)}
    for struct in seen:
        for info in msgspec.structs.fields(struct):
            names = [r.vocabulary for r in rules(info.type) if r.vocabulary is not None]
            if names:
                prop = components[struct.__name__]["properties"][info.encode_name]
                branch = next((s for s in prop.get("anyOf", [prop]) if s.get("type") == "string"), prop)
                branch["enum"] = vocabularies[names[0]]


def _content(schema: Schema, body: Any, media_type: str = "application/json") -> Schema:
    found = None if isinstance(body, dict) else example(body)
    media: Schema = {"schema": schema}
    if found is not None:
        media["example"] = msgspec.to_builtins(found)
    return {media_type: media}


def _operation(op: Operation, refs: dict[Any, Schema]) -> Schema:
    params = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name]}
              for name in _PATH_PARAM.findall(op.path)]
    params += [{"name": p.name, "in": "query", "required": False, "schema": p.schema}
               | ({"description": p.description} if p.description else {}) for p in op.query]
    spec: Schema = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                    "security": SECURITY[op.access], "parameters": params, "responses": {}}
    if op.body is not None:
        schema = op.body if isinstance(op.body, dict) else refs[op.body]
        spec["requestBody"] = {"required": True, "content": _content(schema, op.body)}
    for status, answer in op.answers.items():
        schema = answer if isinstance(answer, dict) else refs[answer]
        spec["responses"][str(status)] = {"description": "OK" if status < 300 else ERRORS[status][0],
                                          "content": _content(schema, answer, op.media if status < 300 else
                                                              "application/json")}
    extra = {400, 401, *op.errors} | ({403} if op.access != "api_key" else set()) | ({413} if op.body else set())
    for status in sorted(extra - set(op.answers)):
        spec["responses"][str(status)] = {"$ref": f"#/components/responses/E{status}"}
    return spec


def openapi_document(*, tiers: Collection[str], power_levels: Collection[str]) -> dict[str, Any]:
    """The whole document; `tiers` and `power_levels` are the policy file's names."""
    bodies = list(dict.fromkeys(body for op in OPERATIONS for body in declared(op)))
    schemas, components = msgspec.json.schema_components([*bodies, Error], ref_template=REF)
    refs = dict(zip([*bodies, Error], schemas, strict=True))
    _with_vocabularies(components, {"tiers": sorted(tiers), "power_levels": sorted(power_levels)})
    paths: dict[str, Schema] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    bearer = {"type": "http", "scheme": "bearer"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "creditgate", "version": "1.0",
                 "description": "A billing gateway in front of LiteLLM. Amounts are integer millicredits "
                                "(1,000 credits = $1.00). Client paths are also served under /api/v1/llm."},
        "security": [{"apiKey": []}],
        "tags": [{"name": "caller", "description": "The caller's own endpoints (their API key, active org)."},
                 {"name": "admin", "description": "The operator's admin API, and org admins' lane in it."},
                 {"name": "billed", "description": "The OpenAI-compatible routes, billed."}],
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {**bearer, "description": "An API key (sk-cg-...)."},
                                "adminToken": {**bearer, "description": "CREDITGATE_ADMIN_TOKEN (the operator)."}},
            "schemas": components,
            "responses": {f"E{status}": {"description": text, "content": {"application/json": {
                "schema": refs[Error], "example": error.body()}}} for status, (text, error) in ERRORS.items()},
        },
    }


def openapi_routes(*, tiers: Collection[str], power_levels: Collection[str]) -> list[BaseRoute]:
    """GET /openapi.json and the /docs page that browses it, unauthenticated (they describe the
    interface, not any data)."""
    content = orjson.dumps(openapi_document(tiers=tiers, power_levels=power_levels))

    async def serve(request: Request) -> Response:
        return Response(content, media_type="application/json")

    return [Route("/openapi.json", serve, methods=["GET"]), *docs_routes("/openapi.json")]
