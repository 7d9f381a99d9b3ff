"""GET /openapi.json: an OpenAPI 3.1 description of the caller's and the operator's routes.

Written by hand from CONTRACT.md so it says what clients may rely on (and no more); the tier and
power-level vocabularies come from the policy file. The document is built once per app and served
as fixed bytes. Every path is under `/v1`; the same client paths are also served under `/api/v1/llm`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

Schema = dict[str, Any]
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
NULL_INT = {"type": ["integer", "null"]}
NULL_STR = {"type": ["string", "null"]}
ANY_OBJECT = {"type": "object", "additionalProperties": True}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Schema], required: Collection[str] = ()) -> Schema:
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def _listing(item: Schema) -> Schema:
    return _obj({"data": {"type": "array", "items": item}, "has_more": BOOL}, ("data", "has_more"))


def _param(name: str, where: str = "query", schema: Schema = STR, *, required: bool = False) -> Schema:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


PAGE = [_param("limit", schema={"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
        _param("after", schema={**STR, "description": "the last row's id of the previous page"})]
WINDOW = [_param("start", schema=TIME), _param("end", schema=TIME)]


def _op(summary: str, tag: str, response: Schema | None, *, params: list[Schema] | None = None,
        body: Schema | None = None, status: int = 200, errors: Collection[int] = ()) -> Schema:
    """One operation; every operation may also answer 401 and the contract's error body."""
    op: Schema = {"summary": summary, "tags": [tag], "parameters": params or []}
    if tag == "admin":
        op["security"] = [{"adminToken": []}, {"apiKey": []}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    content = {"application/json": {"schema": response}} if response is not None else {}
    op["responses"] = {str(status): {"description": "OK", "content": content}}
    for code in sorted({400, 401, *errors}):
        op["responses"][str(code)] = {"$ref": f"#/components/responses/E{code}"}
    return op


def _schemas(tiers: list[str], levels: list[str]) -> dict[str, Schema]:
    amount = {"type": "integer", "description": "millicredits"}
    return {
        "Error": _obj({"error": _obj({"message": STR, "type": STR, "param": NULL_STR, "code": NULL_STR},
                                     ("message", "type", "param", "code"))}, ("error",)),
        "Org": _obj({"id": STR, "name": STR, "tier": {"enum": tiers}, "suspended": BOOL, "created_at": TIME}),
        "Pool": _obj({"balance": amount, "held": amount, "available": amount, "overage": amount, "granted": amount}),
        "User": _obj({"id": STR, "email": STR, "name": STR, "created_at": TIME}),
        "MemberFields": _obj({
            "role": {"enum": ["member", "admin"]}, "allocation_millicredits": NULL_INT,
            "allocation_period": {"enum": ["none", "day", "week", "month"]}, "default": BOOL,
            "power_level": {"enum": [*levels, None]}, "suspended": BOOL,
        }),
        "Member": {"allOf": [_ref("MemberFields"), _obj({"org_id": STR, "user_id": STR, "email": STR})]},
        "Key": _obj({"id": STR, "user_id": STR, "org_id": NULL_STR, "name": STR, "prefix": STR,
                     "created_at": TIME, "revoked_at": {"type": ["string", "null"], "format": "date-time"},
                     "revoked": BOOL}),
        "CreatedKey": {"allOf": [_ref("Key"), _obj({"key": {**STR, "description": "shown only here, once"}},
                                                   ("key",))]},
        "Credit": _obj({"amount_millicredits": amount, "reason": STR, "idempotency_key": STR}, (
            "amount_millicredits", "reason", "idempotency_key")),
        "AuditEntry": _obj({"id": STR, "actor": {**STR, "description": "'operator' or the org admin's usr_ id"},
                            "action": STR, "org_id": NULL_STR, "target": NULL_STR, "detail": ANY_OBJECT,
                            "created_at": TIME}),
        "Usage": _obj({"requests": INT, "prompt_tokens": INT, "completion_tokens": INT,
                       "charged_millicredits": amount, "list_price_millicredits": amount}),
        "Credits": _obj({"org_id": STR, "pool": _obj({"balance": amount, "held": amount, "available": amount}),
                         "allocation": _obj({"limit": NULL_INT, "used": amount, "held": amount, "available": amount,
                                             "period": STR, "resets_at": NULL_STR})}),
        "RequestRecord": _obj({"request_id": STR, "status": {"enum": ["pending", "settled", "voided"]},
                               "model": STR, "prompt_tokens": NULL_INT, "completion_tokens": NULL_INT,
                               "held_millicredits": amount, "charged_millicredits": NULL_INT,
                               "list_price_millicredits": NULL_INT, "usage_source": NULL_STR, "byok": BOOL}),
        "ByokKey": _obj({"provider": STR, "scope": {"enum": ["user", "org"]}, "masked_key": STR, "enabled": BOOL,
                         "created_at": TIME, "updated_at": TIME}),
    }


def _client_paths() -> dict[str, Schema]:
    openai = {"description": "OpenAI-compatible request; see the OpenAI API reference", **ANY_OBJECT}
    scope = [_param("scope", schema={"enum": ["user", "org"], "default": "user"})]
    provider = [_param("provider", "path"), *scope]
    byok_errors = (403, 404)
    paths: dict[str, Schema] = {
        f"/v1/{route}": {"post": _op(f"{route} (billed; streaming with stream=true)", "client", ANY_OBJECT,
                                     body=openai, errors=(402, 403, 404, 409, 413, 429, 502, 503, 504))}
        for route in ("chat/completions", "completions", "embeddings", "images/generations")
    }
    paths |= {
        "/v1/models": {"get": _op("Models the caller's org may use", "client", _listing(ANY_OBJECT))},
        "/v1/models/categorized": {"get": _op("Models split into platform and BYOK", "client", _obj(
            {"platform": {"type": "array", "items": ANY_OBJECT}, "byok": {"type": "array", "items": ANY_OBJECT}}))},
        "/v1/models/{id}": {"get": _op("One model", "client", ANY_OBJECT, params=[_param("id", "path")],
                                       errors=(404,))},
        "/v1/credits": {"get": _op("Pool and allocation of the active org", "client", _ref("Credits"))},
        "/v1/credits/history": {"get": _op("The caller's ledger entries, newest first", "client",
                                           _listing(ANY_OBJECT), params=PAGE)},
        "/v1/credits/purchase": {"post": _op("Disabled: 410 purchases_disabled", "client", None, status=410)},
        "/v1/usage": {"get": _op("The caller's usage", "client", _listing(_ref("Usage")), params=[
            _param("group_by", schema={"enum": ["model", "day"], "default": "model"}), *WINDOW])},
        "/v1/requests/{id}": {"get": _op("One request's hold and settlement", "client", _ref("RequestRecord"),
                                         params=[_param("id", "path")], errors=(404,))},
        "/v1/byok/keys": {
            "get": _op("The caller's and the org's provider keys, masked", "client", _listing(_ref("ByokKey"))),
            "post": _op("Store (or replace) a provider key", "client", _ref("ByokKey"), status=201, body=_obj(
                {"provider": STR, "api_key": STR, "scope": {"enum": ["user", "org"]}}, ("provider", "api_key")),
                errors=(403,)),
        },
        "/v1/byok/keys/{provider}": {"delete": _op("Delete a provider key", "client", ANY_OBJECT, params=provider,
                                                   errors=byok_errors)},
        "/v1/byok/keys/{provider}/toggle": {"post": _op("Enable or disable a provider key", "client",
                                                        _ref("ByokKey"), params=provider, body=_obj(
                                                            {"enabled": BOOL}, ("enabled",)), errors=byok_errors)},
        "/v1/byok/keys/{provider}/test": {"post": _op("A one-token test call with the key (not billed)", "client",
                                                      ANY_OBJECT, params=provider, errors=byok_errors)},
        "/v1/byok/keys/{provider}/usage": {"get": _op("Usage billed to a provider key", "client", ANY_OBJECT,
                                                      params=provider, errors=byok_errors)},
    }
    return paths


def _admin_paths(tiers: list[str]) -> dict[str, Schema]:
    org, user, key = _param("org", "path"), _param("user", "path"), _param("key", "path")
    org_errors = (403, 404)
    grant = {"allOf": [_ref("Credit"), _obj({"expires_at": TIME})]}
    return {
        "/admin/orgs": {
            "post": _op("Create an org", "admin", _ref("Org"), status=201, errors=(403,),
                        body=_obj({"name": STR, "tier": {"enum": tiers}}, ("name", "tier"))),
            "get": _op("List orgs", "admin", _listing(_ref("Org")), params=PAGE, errors=(403,)),
        },
        "/admin/orgs/{org}": {
            "get": _op("An org with its pool and members", "admin", {"allOf": [_ref("Org"), _obj({
                "pool": _ref("Pool"), "members": {"type": "array", "items": _ref("Member")}})]},
                params=[org], errors=org_errors),
            "patch": _op("Change an org's tier or suspension", "admin", _ref("Org"), params=[org],
                         body=_obj({"tier": {"enum": tiers}, "suspended": BOOL}), errors=org_errors),
        },
        "/admin/orgs/{org}/grants": {"post": _op("Fund the pool (idempotent by idempotency_key)", "admin",
                                                 ANY_OBJECT, params=[org], body=grant, errors=(*org_errors, 409))},
        "/admin/orgs/{org}/adjustments": {"post": _op("A signed correction, e.g. a refund", "admin", ANY_OBJECT,
                                                      params=[org], body=_ref("Credit"), errors=(*org_errors, 409))},
        "/admin/orgs/{org}/usage": {"get": _op("Usage totals", "admin", _listing(_ref("Usage")), errors=org_errors,
                                               params=[org, _param("group_by", schema={
                                                   "enum": ["user", "model", "day"], "default": "model"}),
                                                   _param("user_id"), *WINDOW])},
        "/admin/orgs/{org}/ledger": {"get": _op("The org's journal, newest first", "admin", _listing(ANY_OBJECT),
                                                params=[org, _param("user_id"), *PAGE], errors=org_errors)},
        "/admin/orgs/{org}/audit": {"get": _op("Who changed what in the org, newest first", "admin",
                                               _listing(_ref("AuditEntry")), params=[org, *PAGE], errors=org_errors)},
        "/admin/audit": {"get": _op("Every admin action, newest first", "admin", _listing(_ref("AuditEntry")),
                                    params=[_param("org_id"), *PAGE], errors=(403,))},
        "/admin/orgs/{org}/members/{user}": {
            "put": _op("Add or change a member (only the fields sent change)", "admin", _ref("Member"),
                       params=[org, user], body=_ref("MemberFields"), errors=org_errors),
            "delete": _op("Remove a member (history stays)", "admin", ANY_OBJECT, params=[org, user],
                          errors=org_errors),
        },
        "/admin/users": {
            "post": _op("Create a user", "admin", _ref("User"), status=201, errors=(403, 409),
                        body=_obj({"email": STR, "name": STR}, ("email",))),
            "get": _op("List users (or find one by email)", "admin", _listing(_ref("User")),
                       params=[_param("email"), *PAGE], errors=(403,)),
        },
        "/admin/keys": {
            "post": _op("Create an API key (shown once)", "admin", _ref("CreatedKey"), status=201,
                        body=_obj({"user_id": STR, "org_id": STR, "name": STR}, ("user_id",)), errors=org_errors),
            "get": _op("List API keys (prefix only)", "admin", _listing(_ref("Key")), errors=(403,),
                       params=[_param("user_id"), _param("org_id"), *PAGE]),
        },
        "/admin/keys/{key}": {"delete": _op("Revoke a key on every replica within a second", "admin", _ref("Key"),
                                            params=[key], errors=org_errors)},
    }


def openapi_document(*, tiers: Collection[str], power_levels: Collection[str]) -> dict[str, Any]:
    """The whole document; `tiers` and `power_levels` are the policy file's names."""
    bearer = {"type": "http", "scheme": "bearer"}
    responses = {
        f"E{code}": {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
        for code, text in [(400, "invalid request"), (401, "missing, invalid or revoked credentials"),
                           (402, "insufficient credits"), (403, "not permitted"), (404, "not found"),
                           (409, "conflict"), (413, "body too large"), (429, "rate limited"),
                           (502, "upstream error"), (503, "ledger unavailable"), (504, "upstream timeout")]
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "creditgate", "version": "1.0",
                 "description": "Billing gateway in front of LiteLLM. Amounts are integer millicredits "
                                "(1,000 credits = $1.00). Client paths are also served under /api/v1/llm."},
        "security": [{"apiKey": []}],
        "paths": _client_paths() | _admin_paths(sorted(tiers)),
        "components": {
            "securitySchemes": {"apiKey": {**bearer, "description": "an sk-cg- API key"},
                                "adminToken": {**bearer, "description": "CREDITGATE_ADMIN_TOKEN (the operator)"}},
            "schemas": _schemas(sorted(tiers), sorted(power_levels)),
            "responses": responses,
        },
    }


def openapi_routes(*, tiers: Collection[str], power_levels: Collection[str]) -> list[BaseRoute]:
    """GET /openapi.json, unauthenticated (it describes the interface, not any data)."""
    content = orjson.dumps(openapi_document(tiers=tiers, power_levels=power_levels))

    async def serve(request: Request) -> Response:
        return Response(content, media_type="application/json")

    return [Route("/openapi.json", serve, methods=["GET"])]
