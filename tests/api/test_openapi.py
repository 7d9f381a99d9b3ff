"""GET /openapi.json: a valid OpenAPI 3.1 document listing every caller and admin route of the contract."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate
from starlette.applications import Starlette

from proxy.api.openapi import openapi_routes
from tests.admin.conftest import POWER_LEVELS, TIERS

ADMIN = {
    "/admin/orgs": {"get", "post"},
    "/admin/orgs/{org}": {"get", "patch"},
    "/admin/orgs/{org}/grants": {"post"},
    "/admin/orgs/{org}/adjustments": {"post"},
    "/admin/orgs/{org}/usage": {"get"},
    "/admin/orgs/{org}/ledger": {"get"},
    "/admin/orgs/{org}/audit": {"get"},
    "/admin/audit": {"get"},
    "/admin/orgs/{org}/members/{user}": {"put", "delete"},
    "/admin/users": {"get", "post"},
    "/admin/keys": {"get", "post"},
    "/admin/keys/{key}": {"delete"},
}
CLIENT = {
    "/v1/chat/completions": {"post"},
    "/v1/completions": {"post"},
    "/v1/embeddings": {"post"},
    "/v1/images/generations": {"post"},
    "/v1/models": {"get"},
    "/v1/models/{id}": {"get"},
    "/v1/models/categorized": {"get"},
    "/v1/credits": {"get"},
    "/v1/credits/history": {"get"},
    "/v1/credits/purchase": {"post"},
    "/v1/usage": {"get"},
    "/v1/requests/{id}": {"get"},
    "/v1/byok/keys": {"get", "post"},
    "/v1/byok/keys/{provider}": {"delete"},
    "/v1/byok/keys/{provider}/toggle": {"post"},
    "/v1/byok/keys/{provider}/test": {"post"},
    "/v1/byok/keys/{provider}/usage": {"get"},
}


async def test_openapi_json_describes_every_contract_route_and_validates() -> None:
    app = Starlette(routes=openapi_routes(tiers=TIERS, power_levels=POWER_LEVELS))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert {path: set(ops) for path, ops in doc["paths"].items()} == ADMIN | CLIENT
    schemas = doc["components"]["schemas"]
    assert schemas["Org"]["properties"]["tier"]["enum"] == ["enterprise", "free", "professional", "starter"]
    assert schemas["MemberFields"]["properties"]["power_level"]["enum"] == ["balanced", "eco", "precision", None]
    assert schemas["Error"]["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    assert doc["paths"]["/admin/orgs"]["post"]["security"] == [{"adminToken": []}, {"apiKey": []}]
    assert doc["paths"]["/admin/keys"]["post"]["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreatedKey"
    }
