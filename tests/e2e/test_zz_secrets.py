"""Secrets never leak: run last in the e2e folder, over every gateway log of the session."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, make_member


def test_secrets_never_appear_in_logs_metrics_or_responses(gateway: Gateway) -> None:
    member = make_member(gateway, tier="enterprise")
    byok = "sk-secret-byok-value-5150"
    bodies = []
    with member.http() as http:
        bodies.append(http.post("/v1/byok/keys", json={"provider": "openai", "api_key": byok}).text)
        bodies.append(http.get("/v1/byok/keys").text)
        bodies.append(http.post("/v1/chat/completions", json={
            "model": "byok-gpt", "messages": [{"role": "user", "content": "x"}], "api_key": "sk-client-sneaky"}).text)
        bodies.append(http.post("/v1/chat/completions", content=b"{broken").text)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-cg-not-a-real-key", max_retries=0
                      ).models.list()
    bodies.append(httpx.get(f"{gateway.url}/metrics").text)
    bodies.append(gateway.admin.get(f"/admin/keys?user_id={member.user_id}").__repr__())
    # every gateway this session started, this test last (the file sorts last)
    logs = "".join(p.read_text(errors="replace") for p in Path(gateway.svc.log).parent.glob("gateway-*.log"))
    secrets = [byok, member.key, gateway.env["CREDITGATE_ADMIN_TOKEN"], gateway.env["CREDITGATE_UPSTREAM_KEY"],
               gateway.env["CREDITGATE_BYOK_KEYS"], "sk-client-sneaky", "sk-cg-not-a-real-key"]
    for secret in secrets:
        assert secret not in logs
        for body in bodies:
            assert secret not in body
