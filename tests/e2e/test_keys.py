"""API keys across replicas, and secrets that never leak anywhere."""

from __future__ import annotations

import time

import httpx

from tests.e2e.conftest import Gateway, make_member


def test_revoked_key_is_refused_on_every_replica_within_a_second(gateway: Gateway, replica: Gateway) -> None:
    member = make_member(gateway)
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {member.key}"}
    for gw in (gateway, replica):  # both replicas have the key cached now
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    gateway.admin.revoke(member.key_id)
    revoked_at = time.monotonic()
    while True:
        answer = httpx.post(f"{replica.url}/v1/chat/completions", json=body, headers=headers)
        if answer.status_code == 401 or time.monotonic() - revoked_at > 1.0:
            break
        time.sleep(0.02)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "revoked_api_key"
