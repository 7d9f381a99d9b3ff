"""Rate limits through the whole product: a gateway whose free tier allows 3 requests per minute per
member refuses the 4th with 429 and Retry-After, holds and charges nothing for it, and leaves other
members alone; with its Redis gone the same requests pass, are billed exactly, and are counted."""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack import services
from tests.e2e.conftest import Gateway, Member, make_member, start_gateway

RPM = 3


def limited_policy() -> Path:
    text = (services.ROOT / "policy.yaml").read_text()
    assert "rpm: 60, tpm: 100000," in text
    path = Path(tempfile.mkdtemp(prefix="creditgate-rl-")) / "policy.yaml"
    path.write_text(text.replace("rpm: 60, tpm: 100000,", f"rpm: {RPM},"))
    return path


@pytest.fixture(scope="module")
def limited(pg: services.Service, redis_server: services.Service, litellm: services.Service,
            fake_provider: services.Service) -> Iterator[Gateway]:
    gw = start_gateway(pg, redis_server, litellm, fake_provider, name="e2e_ratelimit", policy=limited_policy())
    yield gw
    gw.admin.close()
    gw.svc.stop()


def chat(member: Member, request_id: str) -> httpx.Response:
    with member.http() as http:
        return http.post("/v1/chat/completions", headers={"x-request-id": request_id},
                         json={"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]})


def metric(gw: Gateway, name: str, labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_the_request_beyond_rpm_is_refused_uncharged_and_others_are_unaffected(limited: Gateway) -> None:
    ann = make_member(limited, tier="free")
    bob = make_member(limited, tier="free", org_id=ann.org_id)  # same org, another member
    started = time.monotonic()
    answers = [chat(ann, f"rl-{i}") for i in range(RPM)]
    assert [r.status_code for r in answers] == [200] * RPM
    charged = sum(int(r.headers["x-credits-charged"]) for r in answers)
    pool = ann.get("/v1/credits").json()["pool"]
    assert pool == {"balance": 100_000_000 - charged, "held": 0, "available": 100_000_000 - charged}

    refused = chat(ann, "rl-over")
    elapsed = time.monotonic() - started
    assert refused.status_code == 429
    assert refused.json() == {"error": {"message": "Rate limit exceeded.", "type": "rate_limit_error",
                                        "param": None, "code": "rate_limited"}}
    assert refused.headers["x-request-id"] == "rl-over"
    assert math.ceil(60 - elapsed) <= int(refused.headers["retry-after"]) <= 60
    assert "x-credits-held" not in refused.headers
    assert ann.get("/v1/credits").json()["pool"] == pool  # nothing held or charged for it
    assert ann.get("/v1/requests/rl-over").status_code == 404
    assert metric(limited, "creditgate_rejections_total", 'reason="rate_limited"') == 1.0

    assert [chat(bob, f"rl-bob-{i}").status_code for i in range(RPM)] == [200] * RPM
    assert chat(ann, "rl-over-2").status_code == 429  # still within ann's window


def test_with_redis_gone_limits_are_not_enforced_and_money_is_exact(
    pg: services.Service, litellm: services.Service, fake_provider: services.Service,
) -> None:
    redis = services.start_redis()
    gw = start_gateway(pg, redis, litellm, fake_provider, name="e2e_ratelimit_down", policy=limited_policy())
    try:
        ann = make_member(gw, tier="free")
        ready = httpx.get(f"{gw.url}/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready", "checks": {
            "litellm": "ok", "postgres": "ok", "redis": "ok"}})
        redis.stop()
        degraded = httpx.get(f"{gw.url}/readyz")  # still serving: keys from PostgreSQL, money unaffected
        assert (degraded.status_code, degraded.json()["checks"]["redis"]) == (200, "degraded")
        answers = [chat(ann, f"down-{i}") for i in range(RPM + 2)]
        assert [r.status_code for r in answers] == [200] * (RPM + 2)
        charged = sum(int(r.headers["x-credits-charged"]) for r in answers)
        assert ann.get("/v1/credits").json()["pool"] == {
            "balance": 100_000_000 - charged, "held": 0, "available": 100_000_000 - charged}
        assert metric(gw, "creditgate_ratelimit_unenforced_total", 'reason="unavailable"') == RPM + 2
        warnings = [line for line in gw.svc.log.read_text().splitlines() if "rate limits not enforced" in line]
        assert len(warnings) == 1  # one warning, not one per request
    finally:
        gw.admin.close()
        gw.svc.stop()
        redis.stop()
