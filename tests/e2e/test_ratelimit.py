"""Rate limits through the whole product, on two `creditgate serve` replicas sharing one PostgreSQL and
one Redis. The free tier here allows 20 requests per minute per member (one more every 3 s), 30 per
org and 10,000 tokens per minute per member: a burst admits exactly the limit whichever replica it
reaches, the refusals hold and charge nothing, `Retry-After` / `retry-after-ms` are the true wait (a
request then succeeds), the OpenAI SDK's default retry waits just that, tokens are reserved from each
request's bound while it runs and given back at settlement; with Redis gone the same requests pass,
are billed exactly, and are counted."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from devstack import services
from devstack.stack import gateway_env, migrate
from tests.e2e.conftest import Gateway, Member, make_member, start_gateway
from tests.e2e.test_billing import settled

RPM, ORG_RPM, TPM = 20, 30, 10_000
SHIPPED = "rpm: 60, tpm: 100000, org_rpm: 600, org_tpm: 1000000,"
MESSAGE = re.compile(r"Rate limit reached: (.+)\. Try again in (\d+\.\d{3}) s\.")


def limited_policy() -> Path:
    text = (services.ROOT / "policy.yaml").read_text()
    assert SHIPPED in text
    path = services.scratch("rl-") / "policy.yaml"
    path.write_text(text.replace(SHIPPED, f"rpm: {RPM}, tpm: {TPM}, org_rpm: {ORG_RPM},"))
    return path


@pytest.fixture(scope="module")
def replicas(pg: services.Service, redis_server: services.Service, litellm: services.Service,
             fake_provider: services.Service) -> Iterator[tuple[Gateway, Gateway]]:
    database_url = services.create_database(pg.url, "e2e_ratelimit")
    migrate(database_url)
    config = services.render_litellm_config(fake_provider.url, services.scratch("rl-") / "litellm_config.yaml")
    # a loaded test machine must not turn a slow Redis answer into a request let through (the default 100 ms
    # fails open, as it should in production): the fail-open path has its own test below
    env = gateway_env(database_url, redis_server.url, litellm.url, litellm_config=config, policy=limited_policy(),
                      extra={"CREDITGATE_RATELIMIT_TIMEOUT_SECONDS": "2"})
    first = start_gateway(pg, redis_server, litellm, fake_provider, name="", database_url=database_url, env=env)
    try:
        second = start_gateway(pg, redis_server, litellm, fake_provider, name="", database_url=database_url, env=env)
    except BaseException:
        first.svc.stop()
        raise
    yield first, second
    for gw in (first, second):
        gw.stop()


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **extra}


ARRIVED: dict[str, float] = {}  # request id -> when its answer arrived (time.monotonic)


async def burst(member: Member, urls: list[str], count: int, prefix: str, **extra: Any) -> list[httpx.Response]:
    """`count` requests at once, spread over `urls` in turn; answers in the order sent."""
    headers = {"authorization": f"Bearer {member.key}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        async def one(i: int) -> httpx.Response:
            answer = await http.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body(**extra),
                                     headers={"x-request-id": f"{prefix}-{i}"})
            ARRIVED[f"{prefix}-{i}"] = time.monotonic()
            return answer

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def chat(member: Member, request_id: str, url: str | None = None) -> httpx.Response:
    with member.http() as http:
        return http.post(f"{url or member.gateway.url}/v1/chat/completions", json=body(),
                         headers={"x-request-id": request_id})


def metric(gw: Gateway, name: str, labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_of(refused: httpx.Response) -> float:
    """The refusal's precise wait in seconds, checked against its Retry-After and its message."""
    assert refused.status_code == 429
    ms = int(refused.headers["retry-after-ms"])
    assert int(refused.headers["retry-after"]) == -(-ms // 1000)  # whole seconds, rounded up
    found = MESSAGE.fullmatch(refused.json()["error"]["message"])
    assert found is not None and found.group(2) == f"{ms / 1000:.3f}"
    return ms / 1000


async def test_a_burst_admits_exactly_the_limit_and_retry_after_is_the_true_wait(
    replicas: tuple[Gateway, Gateway],
) -> None:
    gw, _ = replicas
    ann = make_member(gw, tier="free")
    answers = await burst(ann, [gw.url], RPM + 5, "burst")
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert (len(ok), [r.status_code for r in refused]) == (RPM, [429] * 5)
    charged = sum(int(r.headers["x-credits-charged"]) for r in ok)
    pool = ann.get("/v1/credits").json()["pool"]
    assert pool == {"balance": 100_000_000 - charged, "held": 0, "available": 100_000_000 - charged}
    for r in refused:  # nothing held or charged for them
        assert r.json()["error"] | {"message": ""} == {"message": "", "type": "rate_limit_error", "param": None,
                                                       "code": "rate_limited"}
        assert MESSAGE.fullmatch(r.json()["error"]["message"]).group(1) == "20 requests per minute per member"  # type: ignore[union-attr]
        assert "x-credits-held" not in r.headers
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert ann.get(f"/v1/requests/{r.headers['x-request-id']}").status_code == 404
    # OpenAI's headers on every answer: the gateway's own, never the provider's 4999 beside them
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(RPM))
    assert {tuple(r.headers.get_list("x-ratelimit-limit-requests")) for r in ok} == {("20",)}
    assert all(len(r.headers.get_list("x-ratelimit-remaining-requests")) == 1 for r in ok)
    assert metric(gw, "creditgate_rejections_total", 'reason="rate_limited"') == 5

    last = max(refused, key=wait_of)  # the answers of admitted requests arrive later than the refusals
    wait, received = wait_of(last), ARRIVED[last.headers["x-request-id"]]
    assert 1.5 < wait <= 3.0  # one emission interval (60 s / 20), less the burst's admissions
    while True:  # refusals count nothing: poll until admitted
        sent = time.monotonic()
        if chat(ann, "poll").status_code != 429:
            break
        assert sent - received < 10.0
        time.sleep(0.05)
    measured = sent - received  # the true wait, to one poll interval
    assert abs(measured - wait) < 0.5, (measured, wait)
    assert abs(math.ceil(wait) - measured) < 1.0  # Retry-After's whole seconds: within one of the true wait
    assert chat(ann, "after").status_code == 429  # one slot came back, not a window


async def test_two_replicas_share_the_member_and_the_org_limits(replicas: tuple[Gateway, Gateway]) -> None:
    first, second = replicas
    bob = make_member(first, tier="free")
    carol = make_member(first, tier="free", org_id=bob.org_id)  # same org: 30 a minute between them
    urls = [first.url, second.url]
    bobs, carols = await asyncio.gather(burst(bob, urls, RPM + 6, "bob"), burst(carol, urls[::-1], RPM + 6, "carol"))
    admitted = [sum(r.status_code == 200 for r in rs) for rs in (bobs, carols)]
    assert sum(admitted) == ORG_RPM and max(admitted) <= RPM
    assert {r.status_code for r in bobs + carols} == {200, 429}
    reasons = {MESSAGE.fullmatch(r.json()["error"]["message"]).group(1)  # type: ignore[union-attr]
               for r in bobs + carols if r.status_code == 429}
    assert reasons <= {"20 requests per minute per member", "30 requests per minute for the organization"}
    assert "30 requests per minute for the organization" in reasons


async def test_tokens_are_reserved_from_the_bound_while_requests_run_and_given_back(
    replicas: tuple[Gateway, Gateway],
) -> None:
    """Each request may use its prompt's bound plus max_tokens 3000 (about 3,080 tokens): three fit in
    10,000 at once, whichever replica; once they end having used a few tokens, the next fits at once."""
    first, second = replicas
    dan = make_member(first, tier="free")
    slow = {"max_tokens": 3000, "stream": True, "fake_chunks": 3, "fake_delay_ms": 300}
    answers = await burst(dan, [first.url, second.url], 6, "tok", **slow)
    assert sorted(r.status_code for r in answers) == [200] * 3 + [429] * 3
    for r in answers:
        if r.status_code == 429:
            reason = MESSAGE.fullmatch(r.json()["error"]["message"]).group(1)  # type: ignore[union-attr]
            assert re.fullmatch(r"10000 tokens per minute per member\. This request may use 30\d\d tokens \(its "
                                r"prompt and output cap\)", reason), reason
            assert 10.0 < wait_of(r) < 20.0
            assert int(r.headers["x-ratelimit-remaining-tokens"]) < 3000
    # a stream settles after its last byte, then gives its unused tokens back: wait for the three settlements
    for r in answers:
        if r.status_code == 200:
            assert settled(dan, r.headers["x-request-id"])["status"] == "settled"
    await asyncio.sleep(0.2)  # the give-back follows the settlement in the same cleanup, within a millisecond
    fresh = chat(dan, "tok-after", second.url)  # the three used about 20 tokens each: the rest came back
    assert fresh.status_code == 200
    assert int(fresh.headers["x-ratelimit-remaining-tokens"]) > 10_000 - 3 * 100 - 200


async def test_the_openai_sdk_retries_after_the_true_wait_and_succeeds(replicas: tuple[Gateway, Gateway]) -> None:
    gw, _ = replicas
    eve = make_member(gw, tier="free")
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=eve.key)  # the SDK's default: 2 retries
    assert client.max_retries == 2
    started = time.monotonic()  # the burst's first admission opens the next slot 3 s later
    assert sum(r.status_code == 200 for r in await burst(eve, [gw.url], RPM, "sdk")) == RPM
    refusals = metric(gw, "creditgate_rejections_total", 'reason="rate_limited"')
    answer = client.chat.completions.with_raw_response.create(**body())
    served = time.monotonic() - started
    client.close()
    assert metric(gw, "creditgate_rejections_total", 'reason="rate_limited"') == refusals + 1  # refused once
    assert answer.http_response.status_code == 200 and answer.parse().choices  # then served
    assert answer.http_response.headers["x-ratelimit-remaining-requests"] == "0"
    assert 2.9 < served < 5.0, served  # the next slot, told to the millisecond; the old window made it 60 s


def test_with_redis_gone_limits_are_not_enforced_and_money_is_exact(
    pg: services.Service, litellm: services.Service, fake_provider: services.Service,
) -> None:
    redis = services.start_redis()
    gw = start_gateway(pg, redis, litellm, fake_provider, name="e2e_ratelimit_down", policy=limited_policy())
    try:
        ann = make_member(gw, tier="free")
        ready = httpx.get(f"{gw.url}/readyz")
        assert (ready.status_code, ready.json()["checks"]["redis"]) == (200, "ok")
        redis.stop()
        degraded = httpx.get(f"{gw.url}/readyz")  # still serving: keys from PostgreSQL, money unaffected
        assert (degraded.status_code, degraded.json()["checks"]["redis"]) == (200, "degraded")
        answers = [chat(ann, f"down-{i}") for i in range(RPM + 2)]
        assert [r.status_code for r in answers] == [200] * (RPM + 2)
        assert answers[0].headers.get_list("x-ratelimit-remaining-requests") == ["4999"]  # the provider's only
        charged = sum(int(r.headers["x-credits-charged"]) for r in answers)
        assert ann.get("/v1/credits").json()["pool"] == {
            "balance": 100_000_000 - charged, "held": 0, "available": 100_000_000 - charged}
        assert metric(gw, "creditgate_ratelimit_unenforced_total", 'reason="unavailable"') == RPM + 2
        warnings = [line for line in gw.svc.log.read_text().splitlines() if "rate limits not enforced" in line]
        assert len(warnings) == 1  # one warning, not one per request
    finally:
        gw.stop()
        redis.stop()
