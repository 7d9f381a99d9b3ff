"""Scoped API keys through the real stack (issue 12): a key's own spend limit held with the pool and the
allocation, its routes, models and read-only flag, and a change reaching every replica within a second."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.e2e.conftest import Gateway, Member, make_member

CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "count the credits"}]}


def post(member: Member, key: str, path: str, body: dict[str, Any], gw: Gateway | None = None) -> httpx.Response:
    url = (gw or member.gateway).url
    return httpx.post(f"{url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60)


def get(member: Member, key: str, path: str) -> httpx.Response:
    return httpx.get(f"{member.gateway.url}{path}", headers={"authorization": f"Bearer {key}"}, timeout=60)


def error(code: str, message: str, status_type: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": status_type, "param": None, "code": code}}


def key_usage(gateway: Gateway, member: Member, key_id: str) -> dict[str, Any]:
    rows = gateway.admin.get(f"/admin/keys?user_id={member.user_id}")["data"]
    return dict(next(r for r in rows if r["id"] == key_id)["usage"])


def test_a_keys_own_limit_is_the_third_bound_of_the_same_reserve(gateway: Gateway) -> None:
    member = make_member(gateway, allocation=10_000_000, period="month")
    key_id, key = gateway.admin.key(member.user_id, member.org_id, limit_millicredits=10**9, limit_period="month")
    first = post(member, key, "/v1/chat/completions", CHAT)
    assert first.status_code == 200, first.text
    held, charged = int(first.headers["x-credits-held"]), int(first.headers["x-credits-charged"])
    assert 0 < charged <= held

    # a limit one millicredit short of the next hold: refused by the key, nothing held anywhere
    gateway.admin.patch_key(key_id, limit_millicredits=charged + held - 1)
    refused = post(member, key, "/v1/chat/completions", CHAT)
    assert (refused.status_code, refused.json()) == (402, error(
        "key_limit_exhausted", f"This API key's own spend limit cannot cover this request ({held} millicredits held).",
        "insufficient_credits"))
    credits = get(member, key, "/v1/credits").json()
    assert credits["key"] == {"id": key_id, "limit": charged + held - 1, "used": charged, "held": 0,
                              "available": held - 1, "period": "month", "resets_at": credits["key"]["resets_at"]}
    assert credits["key"]["resets_at"] == credits["allocation"]["resets_at"]  # both the first of next month
    assert credits["allocation"]["used"] == charged and credits["pool"]["held"] == 0

    # the member's other key has no limit of its own: the pool and the allocation admit it
    _, other = gateway.admin.key(member.user_id, member.org_id)
    assert post(member, other, "/v1/chat/completions", CHAT).status_code == 200

    # exactly enough: admitted, and X-Credits-Remaining is the smallest bound, the key's
    gateway.admin.patch_key(key_id, limit_millicredits=charged + held)
    third = post(member, key, "/v1/chat/completions", CHAT)
    assert third.status_code == 200, third.text
    third_charge = int(third.headers["x-credits-charged"])
    assert int(third.headers["x-credits-remaining"]) == held - third_charge
    assert key_usage(gateway, member, key_id) == {
        "limit": charged + held, "used": charged + third_charge, "held": 0, "available": held - third_charge,
        "period": "month", "resets_at": credits["key"]["resets_at"]}


SLOW = {"fake_chunks": 20, "fake_delay_ms": 100}  # still streaming (2 s) while the test reads the key's hold


def test_a_stream_is_held_against_the_key_and_settled_into_it(gateway: Gateway) -> None:
    member = make_member(gateway)
    key_id, key = gateway.admin.key(member.user_id, member.org_id, limit_millicredits=10**6)
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True, **SLOW},
                      headers={"authorization": f"Bearer {key}"}, timeout=60) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        held = int(response.headers["x-credits-held"])
        assert key_usage(gateway, member, key_id)["held"] == held  # the hold is on the key while it streams
        for _ in response.iter_bytes():
            pass
    deadline = time.monotonic() + 5
    while (record := get(member, key, f"/v1/requests/{request_id}").json())["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    usage = key_usage(gateway, member, key_id)
    assert (usage["used"], usage["held"], usage["available"]) == (
        record["charged_millicredits"], 0, 10**6 - record["charged_millicredits"])


def test_routes_models_and_read_only_narrow_what_a_key_may_do(gateway: Gateway) -> None:
    member = make_member(gateway)
    _, key = gateway.admin.key(member.user_id, member.org_id, models=["fake-small"],
                               routes=["/v1/chat/completions", "/v1/credits", "/v1/models"])
    assert post(member, key, "/api/v1/llm/chat/completions", CHAT).status_code == 200
    wrong_model = post(member, key, "/v1/chat/completions", {**CHAT, "model": "fake-medium"})
    assert (wrong_model.status_code, wrong_model.json()) == (403, error(
        "model_not_allowed", "This API key may not use the model 'fake-medium'.", "permission_error"))
    wrong_route = post(member, key, "/v1/embeddings", {"model": "fake-embed", "input": "x"})
    assert (wrong_route.status_code, wrong_route.json()) == (403, error(
        "route_not_allowed", "This API key may not call /v1/embeddings.", "permission_error"))
    assert get(member, key, "/v1/usage").json()["error"]["code"] == "route_not_allowed"
    assert [m["id"] for m in get(member, key, "/v1/models").json()["data"]] == ["fake-small"]
    credits = get(member, key, "/v1/credits").json()
    assert credits["pool"]["held"] == 0 and credits["allocation"]["used"] == credits["key"]["used"]  # refusals: 0

    _, reader = gateway.admin.key(member.user_id, member.org_id, read_only=True)
    assert get(member, reader, "/v1/credits").status_code == 200
    assert get(member, reader, "/v1/usage").status_code == 200
    byok = {"provider": "openai", "api_key": "sk-x" * 4}
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/byok/keys", byok)):
        refused = post(member, reader, path, body)
        assert (refused.status_code, refused.json()) == (403, error(
            "read_only_key", "This API key is read-only: it may only read (GET).", "permission_error")), path


def test_an_org_admins_read_only_key_reads_the_admin_api_and_changes_nothing(gateway: Gateway) -> None:
    admin = make_member(gateway, role="admin")
    _, reader = gateway.admin.key(admin.user_id, admin.org_id, read_only=True)
    headers = {"authorization": f"Bearer {reader}"}
    assert httpx.get(f"{gateway.url}/admin/orgs/{admin.org_id}", headers=headers).status_code == 200
    refused = httpx.post(f"{gateway.url}/admin/keys", json={"user_id": admin.user_id}, headers=headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "read_only_key")


def test_a_change_of_scope_reaches_every_replica_within_a_second(gateway: Gateway, replica: Gateway) -> None:
    member = make_member(gateway)
    key_id, key = gateway.admin.key(member.user_id, member.org_id)
    for gw in (gateway, replica):  # both replicas have the key cached now
        assert post(member, key, "/v1/chat/completions", CHAT, gw).status_code == 200
    gateway.admin.patch_key(key_id, read_only=True)
    changed_at = time.monotonic()
    while True:
        answer = post(member, key, "/v1/chat/completions", CHAT, replica)
        if answer.status_code == 403 or time.monotonic() - changed_at > 1.0:
            break
        time.sleep(0.02)
    assert (answer.status_code, answer.json()["error"]["code"]) == (403, "read_only_key")


def test_usage_groups_by_the_power_level_that_served_it(gateway: Gateway) -> None:
    """The level is written on the hold and its usage record (0008), so usage (and the console) can split by it."""
    member = make_member(gateway)
    charged = {"eco": 0, "balanced": 0}
    for level, times in (("eco", 2), ("balanced", 1)):
        for _ in range(times):
            with member.http() as http:
                answer = http.post("/v1/chat/completions", json={**CHAT, "model": "auto"},
                                   headers={"x-power-level": level})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-power-level-served"] == level
            charged[level] += int(answer.headers["x-credits-charged"])
    rows = member.get("/v1/usage", params={"group_by": "power_level"}).json()["data"]
    assert [(r["power_level"], r["requests"], r["charged_millicredits"]) for r in rows] == [
        ("balanced", 1, charged["balanced"]), ("eco", 2, charged["eco"])]
