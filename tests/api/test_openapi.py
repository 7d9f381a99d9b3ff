"""GET /openapi.json: a valid OpenAPI 3.1 document generated from the route table and the declarations,
with operationIds, the policy file's vocabularies as enums, security per lane, typed errors, and request
schemas that refuse what the handlers refuse."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from starlette.applications import Starlette

from proxy.api import bodies
from proxy.api.decode import BodyReader
from proxy.api.openapi import openapi_document, openapi_routes
from proxy.api.operations import OPERATIONS
from proxy.caller.byok import validate_key
from proxy.errors import ProxyError
from tests.admin.conftest import POWER_LEVELS, TIERS

ORG, USER = "org_01jcz8d9p3n6r8t1v4w7y0a2c5", "usr_01jcz8e0k0m4s7q9w2x5y8b3d6"
GRANT = {"amount_millicredits": 5, "reason": "r", "idempotency_key": "k"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi_document(tiers=TIERS, power_levels=POWER_LEVELS)


async def test_openapi_json_is_served_valid_and_describes_every_operation(doc: dict[str, Any]) -> None:
    app = Starlette(routes=openapi_routes(tiers=TIERS, power_levels=POWER_LEVELS))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as http:
        response = await http.get("/openapi.json")
    assert (response.status_code, response.headers["content-type"]) == (200, "application/json")
    assert response.json() == msgspec.json.decode(msgspec.json.encode(doc))
    validate(response.json())
    assert doc["openapi"] == "3.1.0"
    operations = {(method.upper(), path): op for path, item in doc["paths"].items() for method, op in item.items()}
    assert set(operations) == {(op.method, op.path) for op in OPERATIONS}
    assert [operations[(op.method, op.path)]["operationId"] for op in OPERATIONS] == [
        op.operation_id for op in OPERATIONS]


def test_the_policy_files_vocabularies_are_enums(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    tiers = ["enterprise", "free", "professional", "starter"]
    assert schemas["CreateOrg"]["properties"]["tier"]["enum"] == tiers
    assert schemas["PatchOrg"]["properties"]["tier"]["enum"] == tiers
    assert schemas["Org"]["properties"]["tier"]["enum"] == tiers
    level, null = schemas["PutMember"]["properties"]["power_level"]["anyOf"]
    assert (level["enum"], null) == (["balanced", "eco", "precision"], {"type": "null"})
    assert schemas["Member"]["properties"]["power_level"]["anyOf"][0]["enum"] == ["balanced", "eco", "precision"]
    other = openapi_document(tiers=["gold"], power_levels=["fast"])["components"]["schemas"]
    assert other["CreateOrg"]["properties"]["tier"]["enum"] == ["gold"]


def test_security_follows_who_may_call(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    assert paths["/admin/orgs"]["post"]["security"] == [{"adminToken": []}]
    assert paths["/admin/orgs/{org}/members/{user}"]["put"]["security"] == [{"adminToken": []}, {"apiKey": []}]
    assert paths["/v1/credits"]["get"]["security"] == [{"apiKey": []}]
    assert set(doc["components"]["securitySchemes"]) == {"adminToken", "apiKey"}


def test_answers_and_errors_are_typed(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    created = paths["/admin/keys"]["post"]["responses"]
    assert created["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CreatedApiKey"}
    assert set(created) == {"201", "400", "401", "403", "404", "413"}
    assert created["413"] == {"$ref": "#/components/responses/E413"}
    assert doc["components"]["responses"]["E413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    listed = paths["/admin/orgs"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed == {"$ref": "#/components/schemas/Listing_Org_"}
    assert doc["components"]["schemas"]["Listing_Org_"]["required"] == ["data", "has_more"]
    error = doc["components"]["schemas"]["ErrorDetail"]
    assert error["required"] == ["message", "type", "param", "code"]
    purchase = paths["/v1/credits/purchase"]["post"]["responses"]
    assert purchase["410"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "200" not in purchase
    # the caller's own routes are not the admin API's: no 403 unless a route can refuse one
    assert "403" not in paths["/v1/credits"]["get"]["responses"]


def test_the_usage_downloads_are_csv_and_the_usage_routes_name_their_filters(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    for path in ("/v1/usage.csv", "/admin/orgs/{org}/usage.csv"):
        answer = paths[path]["get"]["responses"]
        assert list(answer["200"]["content"]) == ["text/csv"]
        assert answer["200"]["content"]["text/csv"]["schema"]["type"] == "string"
        assert answer["400"] == {"$ref": "#/components/responses/E400"}
        names = [p["name"] for p in paths[path]["get"]["parameters"] if p["in"] == "query"]
        assert {"end_user", "tag", "start", "end"} <= set(names)
    groups = {path: next(p["schema"]["enum"] for p in paths[path]["get"]["parameters"] if p["name"] == "group_by")
              for path in ("/v1/usage", "/admin/orgs/{org}/usage")}
    assert groups == {"/v1/usage": ["model", "day", "end_user", "tag", "power_level"],
                      "/admin/orgs/{org}/usage": ["user", "model", "day", "price_version", "key_id", "end_user",
                                                  "tag", "power_level"]}
    usage = doc["components"]["schemas"]["Usage"]["properties"]
    assert {"end_user", "tag", "key_id"} <= set(usage)


# (declaration, body, the param the handler names): the schema refuses it too
REFUSED: list[tuple[type[bodies.Body], dict[str, Any], str | None]] = [
    (bodies.CreateOrg, {"name": "A", "tier": "platinum"}, "tier"),
    (bodies.CreateOrg, {"name": "", "tier": "free"}, "name"),
    (bodies.CreateOrg, {"name": "x" * 201, "tier": "free"}, "name"),
    (bodies.CreateOrg, {"name": "A", "tier": "free", "plan": "x"}, "plan"),
    (bodies.CreateOrg, {"tier": "free"}, "name"),
    (bodies.PatchOrg, {"suspended": "yes"}, "suspended"),
    (bodies.PatchOrg, {"tier": None}, "tier"),
    (bodies.Grant, {**GRANT, "amount_millicredits": 0}, "amount_millicredits"),
    (bodies.Grant, {**GRANT, "amount_millicredits": 1.5}, "amount_millicredits"),
    (bodies.Grant, {**GRANT, "amount_millicredits": True}, "amount_millicredits"),
    (bodies.Grant, {**GRANT, "amount_millicredits": 10**16}, "amount_millicredits"),
    (bodies.Grant, {**GRANT, "reason": "nul\u0000"}, "reason"),
    (bodies.Adjustment, {**GRANT, "amount_millicredits": 0}, "amount_millicredits"),
    (bodies.Adjustment, {**GRANT, "expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
    (bodies.CreateUser, {"email": "not-an-email"}, "email"),
    (bodies.CreateUser, {"email": "a@b"}, "email"),
    (bodies.PutMember, {"role": "owner"}, "role"),
    (bodies.PutMember, {"role": None}, "role"),
    (bodies.PutMember, {"allocation_millicredits": -1}, "allocation_millicredits"),
    (bodies.PutMember, {"allocation_period": "year"}, "allocation_period"),
    (bodies.PutMember, {"power_level": "turbo"}, "power_level"),
    (bodies.CreateKey, {"user_id": "bob"}, "user_id"),
    (bodies.CreateKey, {"user_id": USER, "org_id": USER}, "org_id"),
    (bodies.PutProviderKey, {"provider": "openai", "api_key": "sk-1"}, "api_key"),
    (bodies.PutProviderKey, {"provider": "openai", "api_key": "sk-12345678", "scope": "team"}, "scope"),
    (bodies.ToggleProviderKey, {}, "enabled"),
    (bodies.ToggleProviderKey, {"enabled": "yes"}, "enabled"),
]


def schema_of(doc: dict[str, Any], struct: type[msgspec.Struct]) -> OAS31Validator:
    return OAS31Validator({"$ref": f"#/components/schemas/{struct.__name__}", "components": doc["components"]})


@pytest.mark.parametrize(("struct", "body", "param"), REFUSED)
def test_each_request_schema_refuses_what_its_handler_refuses(doc: dict[str, Any], struct: type[bodies.Body],
                                                              body: dict[str, Any], param: str) -> None:
    assert not schema_of(doc, struct).is_valid(body)
    assert refusal(struct, body) == (400, param)


def refusal(struct: type[bodies.Body], body: dict[str, Any]) -> tuple[int, str | None]:
    """What the handler answers: the declaration's refusal, or for a provider key the route's own check
    (the key's length is measured trimmed)."""
    reader = BodyReader(tiers=TIERS, power_levels=POWER_LEVELS, providers=["openai"])
    with pytest.raises(ProxyError) as refused:
        decoded = reader.decode(msgspec.json.encode(body), struct)
        if isinstance(decoded, bodies.PutProviderKey):
            validate_key(decoded.api_key)
    return refused.value.status, refused.value.param


def test_each_request_schema_accepts_good_bodies(doc: dict[str, Any]) -> None:
    accepted = [(bodies.PatchOrg, {"suspended": None, "tier": "free"}), (bodies.PutMember, {}),
                (bodies.PutMember, {"allocation_millicredits": None, "power_level": None}),
                (bodies.CreateKey, {"user_id": USER, "org_id": ORG}), (bodies.Adjustment, {**GRANT,
                                                                                         "amount_millicredits": -5})]
    for struct, body in accepted:
        assert schema_of(doc, struct).is_valid(body), (struct, body)
