"""What the real app answers over the real PgLedger and PgDirectory is what /openapi.json declares: on
every caller and admin route, the status is a declared one and the body decodes as its declared answer
with exactly its fields (no field undeclared, none missing), nested rows included."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from proxy.api.operations import CALLER, OPERATIONS, Operation

from .world import DEAD_LETTER, KEY_IDS, MEMBER_A, PRICES, TARGET_A, A, World, seed_export_rows

GRANT = {"amount_millicredits": 5_000, "reason": "answers", "idempotency_key": "answers-1"}
# (caller, method, path, body), in an order in which each succeeds
CALLS: list[tuple[str, str, str, Any]] = [
    ("operator", "POST", "/admin/orgs", {"name": "New", "tier": "free"}),
    ("operator", "GET", "/admin/orgs", None),
    ("admin_a", "GET", f"/admin/orgs/{A}", None),
    ("operator", "PATCH", f"/admin/orgs/{A}", {"tier": "enterprise"}),
    ("operator", "POST", f"/admin/orgs/{A}/grants", {**GRANT, "expires_at": "2999-01-01T00:00:00Z"}),
    ("operator", "POST", f"/admin/orgs/{A}/adjustments", {**GRANT, "amount_millicredits": -100,
                                                       "idempotency_key": "answers-2"}),
    ("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=user", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=model", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=day", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=price_version", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=key_id", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=end_user", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=tag", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/usage.csv?start=2026-01-01T00:00:00Z&end=2026-03-01T00:00:00Z", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/ledger", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/audit", None),
    ("operator", "GET", "/admin/audit", None),
    ("operator", "GET", "/admin/price-versions", None),
    ("operator", "GET", f"/admin/price-versions/{PRICES.version}", None),
    ("admin_a", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}", {"allocation_millicredits": 5_000, "power_level": "eco"}),
    ("admin_a", "GET", f"/admin/orgs/{A}/members/{MEMBER_A}", None),
    ("operator", "POST", "/admin/users", {"email": "new@lanes.test", "name": "New"}),
    ("operator", "GET", "/admin/users", None),
    ("admin_a", "POST", "/admin/keys", {"user_id": TARGET_A, "name": "answers"}),
    ("operator", "GET", "/admin/keys", None),
    ("admin_a", "PATCH", f"/admin/keys/{KEY_IDS['target_a']}", {"limit_millicredits": 5000, "read_only": True}),
    ("admin_a", "DELETE", f"/admin/keys/{KEY_IDS['target_a']}", None),
    ("admin_a", "DELETE", f"/admin/orgs/{A}/members/{TARGET_A}", None),
    ("member_a", "GET", "/v1/credits", None),
    ("member_a", "GET", "/v1/credits/history", None),
    ("member_a", "POST", "/v1/credits/purchase", {"amount": 5}),
    ("member_a", "GET", "/v1/usage", None),
    ("member_a", "GET", "/api/v1/llm/usage?group_by=day", None),
    ("member_a", "GET", "/v1/usage?group_by=tag&end_user=x", None),
    ("member_a", "GET", "/v1/usage.csv?start=2026-01-01T00:00:00Z&end=2026-03-01T00:00:00Z", None),
    ("member_a", "GET", "/v1/requests/req-a1", None),
    ("member_a", "GET", "/v1/models", None),
    ("member_a", "GET", "/v1/models/categorized", None),
    ("member_a", "GET", "/v1/models/fake-small", None),
    ("member_a", "POST", "/v1/byok/keys", {"provider": "openai", "api_key": "sk-own-provider-key-1234"}),
    ("member_a", "GET", "/v1/byok/keys", None),
    ("admin_a", "POST", "/v1/byok/keys/openai/toggle?scope=org", {"enabled": False}),
    ("admin_a", "POST", "/v1/byok/keys/openai/test?scope=org", None),
    ("member_a", "GET", "/v1/byok/keys/openai/usage", None),
    ("member_a", "DELETE", "/v1/byok/keys/openai", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/alerts", None),
    ("admin_a", "GET", f"/admin/orgs/{A}/alert-thresholds", None),
    ("admin_a", "PUT", f"/admin/orgs/{A}/alert-thresholds", {"pool": [75, 90]}),
    ("operator", "GET", "/admin/export/dead-letters", None),
    ("operator", "POST", f"/admin/export/dead-letters/{DEAD_LETTER}/retry", None),
]


def operation(method: str, path: str) -> Operation:
    path = path.split("?")[0].replace("/api/v1/llm/", "/v1/", 1)
    found = [op for op in OPERATIONS if op.method == method
             and re.fullmatch(re.sub(r"{\w+}", "[^/]+", op.path), path)]
    # /v1/models/categorized also matches /v1/models/{model_id}: the literal path wins, as in the router
    return min(found, key=lambda op: op.path.count("{"))


def shape(value: Any) -> Any:
    """The field names of a JSON value, nested; leaves are None."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return None


async def test_every_answer_is_its_declaration_field_for_field(world: World) -> None:
    await seed_export_rows(world.pool)
    seen = set()
    for caller, method, path, body in CALLS:
        response = await world.call(caller, method, path, body)
        op = operation(method, path)
        assert response.status_code in op.answers, (path, response.status_code, response.text)
        seen.add(op.operation_id)
        if op.media != "application/json":  # the CSV downloads (their content: tests/e2e/test_attribution.py)
            assert response.headers["content-type"].split(";")[0] == op.media, path
            continue
        declared = op.answers[response.status_code]
        decoded = msgspec.json.decode(response.content, type=declared)
        assert shape(msgspec.to_builtins(decoded)) == shape(response.json()), path
        seen.add(op.operation_id)
    assert seen == {op.operation_id for op in OPERATIONS if op.path.startswith("/admin/") or op in CALLER}


async def test_a_row_with_a_field_the_declaration_lacks_would_be_caught(world: World) -> None:
    response = await world.call("member_a", "GET", "/v1/requests/req-a1")
    declared = operation("GET", "/v1/requests/req-a1").answers[200]
    extra = {**response.json(), "user_id": "usr_member_a"}
    decoded = msgspec.convert(extra, declared, strict=False)
    assert shape(msgspec.to_builtins(decoded)) != shape(extra)
