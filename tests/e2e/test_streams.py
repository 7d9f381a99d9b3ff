"""Streams end to end: concurrency on a small pool, a client that leaves, a replica that dies."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai

from devstack import services
from tests.e2e.conftest import Gateway, Member, make_member, start_gateway, stream_then_kill, write_policy
from tests.e2e.test_billing import settled

SLOW = {"fake_chunks": 80, "fake_delay_ms": 50}


def _hold_for(member: Member, body: dict[str, Any]) -> int:
    raw = member.client().chat.completions.with_raw_response.create(**body)
    return int(raw.headers["x-credits-held"])


async def _stream(client: openai.AsyncOpenAI, rid: str, body: dict[str, Any]) -> str:
    try:
        stream = await client.chat.completions.create(**body, stream=True, extra_headers={"X-Request-Id": rid})
        async for _ in stream:
            pass
        return "ok"
    except openai.APIStatusError as exc:
        return str(exc.body["code"]) if isinstance(exc.body, dict) else str(exc.status_code)


def test_fifty_concurrent_streams_on_a_pool_that_affords_ten(gateway: Gateway) -> None:
    body = {"model": "fake-large", "max_tokens": 200, "messages": [{"role": "user", "content": "count"}]}
    probe = make_member(gateway, tier="starter")
    hold = _hold_for(probe, body)
    member = make_member(gateway, tier="starter", credit=10 * hold + hold // 2)

    async def run() -> list[str]:
        # one client for all fifty: built one per stream (25 ms each) they went out over a second or more,
        # and on a slow machine the last could arrive after the first admitted streams had ended
        async with member.aclient() as client:
            return await asyncio.gather(*(_stream(client, f"c50-{i}", {**body, "extra_body": SLOW})
                                          for i in range(50)))

    outcomes = asyncio.run(run())
    admitted = [f"c50-{i}" for i, outcome in enumerate(outcomes) if outcome == "ok"]
    assert len(admitted) == 10, outcomes
    assert sorted(set(outcomes)) == ["ok", "org_pool_exhausted"]
    records = [settled(member, rid) for rid in admitted]
    assert all(r["status"] == "settled" and r["usage_source"] == "provider" for r in records)
    pool = member.get("/v1/credits").json()["pool"]
    spent = sum(r["charged_millicredits"] for r in records)
    assert pool == {"balance": 10 * hold + hold // 2 - spent, "held": 0, "available": 10 * hold + hold // 2 - spent}
    assert pool["balance"] >= 0


def test_client_that_leaves_mid_stream_is_charged_the_estimate(gateway: Gateway, fake_provider: services.Service
                                                                ) -> None:
    member = make_member(gateway)

    async def leave_after_three_chunks() -> None:
        client = member.aclient()
        stream = await client.chat.completions.create(
            model="fake-medium", messages=[{"role": "user", "content": "tell me a long story"}], stream=True,
            extra_headers={"X-Request-Id": "leaver-1"}, extra_body={**SLOW, "fake_tag": "leaver-1"})
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.close()
        await client.close()

    asyncio.run(leave_after_three_chunks())
    record = settled(member, "leaver-1")
    assert record["status"] == "settled" and record["usage_source"] == "estimate"
    assert 0 < record["charged_millicredits"] < record["held_millicredits"]
    assert 2 <= record["completion_tokens"] < 80
    assert member.get("/v1/credits").json()["pool"]["held"] == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        streams = httpx.get(f"{fake_provider.url}/_streams").json()
        if streams.get("leaver-1", {}).get("closed_early"):
            break
        time.sleep(0.1)
    assert streams["leaver-1"]["closed_early"] is True


def test_replica_killed_mid_stream_is_settled_from_its_checkpoint(
    pg: services.Service, redis_server: services.Service, litellm: services.Service,
    fake_provider: services.Service, tmp_path: Any,
) -> None:
    policy = write_policy(tmp_path, hold_ttl_seconds=3, sweep_interval_seconds=1)
    doomed = start_gateway(pg, redis_server, litellm, fake_provider, name="crash", policy=policy)
    survivor = None
    try:
        member = make_member(doomed)

        stream_then_kill(member, doomed, "fake-medium", "crash-1")
        survivor = start_gateway(pg, redis_server, litellm, fake_provider, name="crash",
                                 database_url=doomed.env["CREDITGATE_DATABASE_URL"], env=doomed.env)
        member.gateway = survivor
        record = settled(member, "crash-1", timeout=3 + 2 + 5)
        assert record["status"] == "settled"
        assert record["usage_source"] == "checkpoint"
        assert record["completion_tokens"] > 0 and record["charged_millicredits"] > 0
        assert member.get("/v1/credits").json()["pool"]["held"] == 0
    finally:
        doomed.svc.stop()
        if survivor:
            survivor.svc.stop()
