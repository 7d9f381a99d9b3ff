"""The BYOK key endpoints on the real PgDirectory: store (sealed), list (masked), delete, toggle,
test, usage; scopes and who may use them; bad input; the key never shows in answers or logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.caller.probe import REJECTED
from proxy.config.settings import Secret

from .conftest import Caller, answer, error

KEY = "sk-member-own-key-0001"
ORG_KEY = "sk-org-shared-key-7777"


def forbidden() -> tuple[int, dict[str, Any]]:
    return error(403, "permission_error", "not_an_org_admin", "Only an organization admin may manage the org's keys.")


def not_stored(scope: str = "user") -> tuple[int, dict[str, Any]]:
    return error(404, "not_found_error", "byok_key_not_found", f"No {scope} key is stored for provider 'openai'.")


def invalid(param: str, message: str) -> tuple[int, dict[str, Any]]:
    return error(400, "invalid_request_error", "invalid_value", message, param)


UNKNOWN_PROVIDER = "Unknown provider; expected one of: openai."


async def stored_rows(caller: Caller) -> list[dict[str, Any]]:
    async with caller.directory._pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM creditgate.provider_keys ORDER BY org_id, scope, owner_id, provider")
    return [dict(r) for r in rows]


def view(row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"provider": row["provider"], "scope": row["scope"], "masked_key": f"****{row['last4']}",
            "enabled": row["enabled"], "created_at": utc_z(row["created_at"]),
            "updated_at": utc_z(row["updated_at"]), **extra}


def utc_z(value: datetime) -> str:
    """How the shared JSON layer writes a time: RFC 3339 in UTC with "Z"."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_storing_a_key_seals_it_and_answers_only_a_mask(caller: Caller) -> None:
    response = await caller.post("/v1/byok/keys", json={"provider": "openai", "api_key": KEY})
    [row] = await stored_rows(caller)
    assert (row["org_id"], row["scope"], row["owner_id"], row["last4"], row["enabled"]) == (
        "org_a", "user", "usr_alice", "0001", True)
    assert KEY.encode() not in row["ciphertext"]
    assert caller.keybox.decrypt(row["ciphertext"]) == Secret(KEY)
    assert answer(response) == (201, view(row))
    assert datetime.fromisoformat(response.json()["created_at"]) == row["created_at"]


async def test_storing_again_replaces_the_key_and_enables_it(caller: Caller) -> None:
    await caller.post("/v1/byok/keys", json={"provider": "openai", "api_key": KEY})
    await caller.post("/v1/byok/keys/openai/toggle", json={"enabled": False})
    response = await caller.post("/api/v1/llm/byok/keys", json={"provider": "OpenAI", "api_key": " sk-newer-key-0002 ",
                                                                "scope": "user"})
    [row] = await stored_rows(caller)
    assert caller.keybox.decrypt(row["ciphertext"]) == Secret("sk-newer-key-0002")
    assert answer(response) == (201, view(row))
    assert (row["last4"], row["enabled"]) == ("0002", True)


async def test_only_org_admins_manage_the_orgs_key(caller: Caller) -> None:
    body = {"provider": "openai", "api_key": ORG_KEY, "scope": "org"}
    assert answer(await caller.post("/v1/byok/keys", "alice", json=body)) == forbidden()
    assert await stored_rows(caller) == []
    assert (await caller.post("/v1/byok/keys", "root", json=body)).status_code == 201
    [row] = await stored_rows(caller)
    assert (row["org_id"], row["scope"], row["owner_id"]) == ("org_a", "org", "org_a")
    for method, tail in [("DELETE", ""), ("POST", "/toggle"), ("POST", "/test"), ("GET", "/usage")]:
        path = f"/v1/byok/keys/openai{tail}?scope=org"
        response = await caller.http.request(method, path, headers={"Authorization": "Bearer bob"},
                                             json={"enabled": False})
        assert answer(response) == forbidden()
    assert [r["enabled"] for r in await stored_rows(caller)] == [True]


async def test_listing_shows_the_members_and_the_orgs_keys_masked(caller: Caller) -> None:
    await caller.post("/v1/byok/keys", "root", json={"provider": "openai", "api_key": ORG_KEY, "scope": "org"})
    await caller.post("/v1/byok/keys", "alice", json={"provider": "openai", "api_key": KEY})
    org_row, alice_row = await stored_rows(caller)
    # alice's own key beats the org's
    assert answer(await caller.get("/v1/byok/keys", "alice")) == (200, {"data": [
        view(alice_row, active=True), view(org_row, active=False)], "has_more": False})
    assert answer(await caller.get("/api/v1/llm/byok/keys", "bob")) == (200, {"data": [view(org_row, active=True)],
                                                                               "has_more": False})
    assert answer(await caller.get("/v1/byok/keys", "carol")) == (200, {"data": [], "has_more": False})
    # a disabled own key gives way to the org's
    await caller.post("/v1/byok/keys/openai/toggle", "alice", json={"enabled": False})
    listed = (await caller.get("/v1/byok/keys", "alice")).json()["data"]
    assert [(k["scope"], k["enabled"], k["active"]) for k in listed] == [("user", False, False), ("org", True, True)]


async def test_toggle_answers_the_key_and_validates_its_body(caller: Caller) -> None:
    assert answer(await caller.post("/v1/byok/keys/openai/toggle", json={"enabled": False})) == not_stored()
    await caller.post("/v1/byok/keys", json={"provider": "openai", "api_key": KEY})
    response = await caller.post("/v1/byok/keys/openai/toggle?scope=user", json={"enabled": False})
    [row] = await stored_rows(caller)
    assert answer(response) == (200, view(row))
    assert row["enabled"] is False
    assert answer(await caller.post("/v1/byok/keys/openai/toggle", json={})) == error(
        400, "invalid_request_error", "missing_field", "Missing required field: 'enabled'.", "enabled")
    assert answer(await caller.post("/v1/byok/keys/openai/toggle", json={"enabled": "yes"})) == invalid(
        "enabled", "'enabled' must be true or false.")
    assert answer(await caller.post("/v1/byok/keys/openai/toggle", content=b"{nope")) == error(
        400, "invalid_request_error", "invalid_json", "The request body is not valid JSON.")
    assert answer(await caller.post("/v1/byok/keys/anthropic/toggle", json={"enabled": True})) == invalid(
        "provider", UNKNOWN_PROVIDER)


async def test_delete_removes_only_the_named_scope(caller: Caller) -> None:
    await caller.post("/v1/byok/keys", "root", json={"provider": "openai", "api_key": ORG_KEY, "scope": "org"})
    await caller.post("/v1/byok/keys", "root", json={"provider": "openai", "api_key": KEY})
    assert answer(await caller.delete("/v1/byok/keys/openai", "root")) == (
        200, {"provider": "openai", "scope": "user", "deleted": True})
    assert [r["scope"] for r in await stored_rows(caller)] == ["org"]
    assert answer(await caller.delete("/v1/byok/keys/openai", "root")) == not_stored()
    assert answer(await caller.delete("/api/v1/llm/byok/keys/openai?scope=org", "root")) == (
        200, {"provider": "openai", "scope": "org", "deleted": True})
    assert answer(await caller.delete("/v1/byok/keys/openai?scope=org", "root")) == not_stored("org")


async def test_a_test_call_uses_the_scopes_stored_key_on_a_byok_model(caller: Caller) -> None:
    assert answer(await caller.post("/v1/byok/keys/openai/test")) == not_stored()
    await caller.post("/v1/byok/keys", "root", json={"provider": "openai", "api_key": ORG_KEY, "scope": "org"})
    await caller.post("/v1/byok/keys", "root", json={"provider": "openai", "api_key": KEY})
    ok = await caller.post("/v1/byok/keys/openai/test", "root")
    assert answer(ok) == (200, {"ok": True, "status": 200, "message": "The provider accepted the key."})
    caller.probe.answer = (401, REJECTED)
    refused = await caller.post("/api/v1/llm/byok/keys/openai/test?scope=org", "root")
    assert answer(refused) == (200, {"ok": False, "status": 401, "message": REJECTED})
    # bob has no key of his own: the org's key is not his to test under scope=user
    assert answer(await caller.post("/v1/byok/keys/openai/test", "bob")) == not_stored()
    assert caller.probe.calls == [("byok-gpt", KEY), ("byok-gpt", ORG_KEY)]


async def test_usage_is_the_ledgers_for_the_member_or_the_whole_org(caller: Caller) -> None:
    counts = {"requests": 3, "prompt_tokens": 40, "completion_tokens": 9, "list_price_millicredits": 123}
    assert answer(await caller.get("/v1/byok/keys/openai/usage", "alice")) == (
        200, {"provider": "openai", "scope": "user", **counts})
    assert answer(await caller.get("/api/v1/llm/byok/keys/openai/usage?scope=org", "root")) == (
        200, {"provider": "openai", "scope": "org", **counts})
    assert answer(await caller.get("/v1/byok/keys/google/usage", "alice")) == invalid("provider", UNKNOWN_PROVIDER)
    assert caller.ledger.calls == [("provider_usage", ("org_a", "usr_alice", "openai")),
                                   ("provider_usage", ("org_a", None, "openai"))]


@pytest.mark.parametrize(("body", "expected"), [
    ({"api_key": KEY}, error(400, "invalid_request_error", "missing_field", "Missing required field: 'provider'.",
                             "provider")),
    ({"provider": "openai"}, error(400, "invalid_request_error", "missing_field",
                                   "Missing required field: 'api_key'.", "api_key")),
    ({"provider": "anthropic", "api_key": KEY}, invalid("provider", UNKNOWN_PROVIDER)),
    ({"provider": 7, "api_key": KEY}, invalid("provider", UNKNOWN_PROVIDER)),
    ({"provider": "openai", "api_key": 12345678}, invalid("api_key", "'api_key' must be a string.")),
    ({"provider": "openai", "api_key": "sk-1"}, invalid("api_key", "'api_key' must be 8 to 4096 characters.")),
    ({"provider": "openai", "api_key": "sk-" + "x" * 4094}, invalid("api_key",
                                                                    "'api_key' must be 8 to 4096 characters.")),
    ({"provider": "openai", "api_key": "sk-two words-1"}, invalid(
        "api_key", "'api_key' must be printable ASCII without spaces.")),
    ({"provider": "openai", "api_key": "sk-line\nbreak-1"}, invalid(
        "api_key", "'api_key' must be printable ASCII without spaces.")),
    ({"provider": "openai", "api_key": "sk-ünïcode-key-1"}, invalid(
        "api_key", "'api_key' must be printable ASCII without spaces.")),
    ({"provider": "openai", "api_key": KEY, "scope": "team"}, invalid("scope", "'scope' must be 'user' or 'org'.")),
    ({"provider": "openai", "api_key": KEY, "scope": None}, invalid("scope", "'scope' must be 'user' or 'org'.")),
    ([KEY], error(400, "invalid_request_error", "invalid_json", "The request body must be a JSON object.")),
])
async def test_storing_rejects_bad_input_without_echoing_the_key(caller: Caller, body: object,
                                                                  expected: object) -> None:
    response = await caller.post("/v1/byok/keys", json=body)
    assert answer(response) == expected
    assert "sk-" not in response.text
    assert await stored_rows(caller) == []


async def test_an_oversized_body_is_413_and_not_stored(caller: Caller) -> None:
    body = b'{"provider": "openai", "api_key": "sk-' + b"x" * 70_000 + b'"}'
    assert answer(await caller.post("/v1/byok/keys", content=body)) == error(
        413, "invalid_request_error", "body_too_large", "The request body exceeds 65536 bytes.")
    assert await stored_rows(caller) == []


@pytest.mark.parametrize("path", ["/v1/byok/keys/openai/usage?scope=everyone", "/v1/byok/keys/openai/usage?scope="])
async def test_a_bad_scope_in_the_query_is_400(caller: Caller, path: str) -> None:
    assert answer(await caller.get(path)) == invalid("scope", "'scope' must be one of 'user', 'org'.")


async def test_the_key_never_appears_in_any_answer_or_log(caller: Caller, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = [
        await caller.post("/v1/byok/keys", json={"provider": "openai", "api_key": KEY}),
        await caller.post("/v1/byok/keys", "root", json={"provider": "openai", "api_key": ORG_KEY, "scope": "org"}),
        await caller.get("/v1/byok/keys"),
        await caller.post("/v1/byok/keys/openai/toggle", json={"enabled": True}),
        await caller.post("/v1/byok/keys/openai/test"),
        await caller.get("/v1/byok/keys/openai/usage"),
        await caller.post("/v1/byok/keys", json={"provider": "nope", "api_key": KEY}),
        await caller.get("/v1/models"),
        await caller.delete("/v1/byok/keys/openai"),
    ]
    assert [b.status_code for b in bodies] == [201, 201, 200, 200, 200, 200, 400, 200, 200]
    seen = "\n".join([b.text for b in bodies] + [repr(r.__dict__) for r in caplog.records] + [caplog.text])
    assert "byok key stored" in caplog.text
    for secret in (KEY, ORG_KEY, KEY[:-4], ORG_KEY[:-4]):
        assert secret not in seen
