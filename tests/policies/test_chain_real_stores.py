"""The whole chain on the real PgDirectory, PgLedger and KeyCache (a fresh PostgreSQL database and
Redis): what the policies hand the ledger is accepted and lands to the millicredit. The upstream is
played by the test, as the passthrough would (the lead's end-to-end tests run the real LiteLLM)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction

import pytest
from cryptography.fernet import Fernet

from devstack import services
from policies import default_policies
from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig
from proxy.config.settings import Secret
from proxy.db.migrate import migrate
from proxy.db.pool import create_pool
from proxy.directory.crypto import KeyBox
from proxy.directory.keycache import KeyCache
from proxy.directory.pg import PgDirectory
from proxy.errors import ProxyError
from proxy.gateway.context import Policy, RequestContext, Usage
from proxy.gateway.tokens import TokenCounter
from proxy.ledger.pg import PgLedger


@dataclass
class Stack:
    chain: tuple[Policy, ...]
    ledger: PgLedger
    directory: PgDirectory
    keybox: KeyBox
    org: str
    user: str
    key: str


@pytest.fixture
async def stack(
    fresh_db: str, redis_server: services.Service, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter
) -> AsyncIterator[Stack]:
    await migrate(fresh_db)
    pool = await create_pool(fresh_db)
    directory = PgDirectory(pool)
    ledger = await PgLedger.connect(fresh_db, hold_ttl_seconds=policy.hold_ttl_seconds)
    keys = KeyCache(directory, Secret(redis_server.url))
    keybox = KeyBox([Secret(Fernet.generate_key().decode())])
    await keys.start()
    try:
        org = (await directory.create_org("Acme", "professional", "test"))["id"]
        user = (await directory.create_user("ada@example.com", "Ada", "test"))["id"]
        await directory.put_member(org, user, {"role": "member", "default": True}, "test")
        key = (await directory.create_key(user, None, "laptop", "test"))["key"]
        await ledger.grant(org, 1_000_000, "seed", "seed-1", None, "test")
        chain = default_policies(keys=keys, directory=directory, ledger=ledger, policy=policy, catalogue=catalogue,
                                 keybox=keybox, counter=counter)
        yield Stack(chain, ledger, directory, keybox, org, user, key.reveal() if isinstance(key, Secret) else key)
    finally:
        await keys.stop()
        await ledger.close()
        await pool.close()


async def through_chain(stack: Stack, ctx: RequestContext, usage: Usage | None, *, deployment: str | None = None
                        ) -> None:
    async with ctx.cleanup:
        for policy in stack.chain:
            await policy(ctx)
        ctx.upstream_status, ctx.deployment_id, ctx.usage = 200, deployment, usage
        if not ctx.stream:
            await ctx.cleanup.aclose()
        ctx.response_started = True


def request(stack: Stack, rid: str, body: dict[str, object], **headers: str) -> RequestContext:
    return RequestContext(request_id=rid, route="chat/completions", body=body,
                          headers={"authorization": f"Bearer {stack.key}", **headers})


async def test_hold_and_charge_land_exactly(stack: Stack, counter: TokenCounter) -> None:
    body: dict[str, object] = {"model": "fake-multi", "messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": 100}
    ctx = request(stack, "req_real_1", body, x_power_level="eco")
    await through_chain(stack, ctx, Usage(1200, 80), deployment="fake-multi-a")

    prompt = counter.prompt_tokens("chat/completions", ctx.body)
    factor = Fraction("1.6") * Fraction("0.25")  # professional; fake-multi is a balanced model
    held = math.ceil(((math.ceil(prompt * Fraction(3, 2)) + 64) * Fraction("0.000002") + 100 * Fraction("0.000004"))
                     * 10**6 * factor)
    charged = math.ceil((1200 * Fraction("0.000001") + 80 * Fraction("0.000002")) * 10**6 * factor)
    assert ctx.response_headers["X-Credits-Held"] == str(held)
    assert ctx.response_headers["X-Credits-Charged"] == str(charged) == "544"
    assert ctx.response_headers["X-Credits-Remaining"] == str(1_000_000 - charged)
    row = await stack.ledger.request(stack.org, "req_real_1")
    assert row is not None
    assert {k: row[k] for k in ("status", "held_millicredits", "charged_millicredits", "list_price_millicredits",
                                "usage_source", "prompt_tokens", "completion_tokens")} == {
        "status": "settled", "held_millicredits": held, "charged_millicredits": 544,
        "list_price_millicredits": 1360, "usage_source": "provider", "prompt_tokens": 1200, "completion_tokens": 80,
    }


async def test_reused_request_id_is_409_and_void_frees_it(stack: Stack) -> None:
    body: dict[str, object] = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]}
    await through_chain(stack, request(stack, "req_real_2", dict(body)), Usage(5, 5))
    with pytest.raises(ProxyError) as info:
        await through_chain(stack, request(stack, "req_real_2", dict(body)), Usage(5, 5))
    assert (info.value.status, info.value.code) == (409, "request_id_in_use")

    voided = request(stack, "req_real_3", dict(body))
    async with voided.cleanup:
        for policy in stack.chain:
            await policy(voided)
        voided.upstream_status = 500  # nothing served
    row = await stack.ledger.request(stack.org, "req_real_3")
    assert row is not None and row["status"] == "voided"
    await through_chain(stack, request(stack, "req_real_3", dict(body)), Usage(5, 5))  # may be reused
    row = await stack.ledger.request(stack.org, "req_real_3")
    assert row is not None and row["status"] == "settled"


async def test_byok_holds_zero_and_records_the_list_price(stack: Stack) -> None:
    await stack.directory.put_provider_key(stack.org, "user", stack.user, "openai",
                                           stack.keybox.encrypt(Secret("sk-ada-own-key-123456")), "3456")
    ctx = request(stack, "req_real_4", {"model": "byok-only", "messages": [{"role": "user", "content": "hi"}]},
                  x_power_level="precision")
    await through_chain(stack, ctx, Usage(1000, 100))
    assert ctx.byok_key == Secret("sk-ada-own-key-123456")
    assert (ctx.response_headers["X-Credits-Held"], ctx.response_headers["X-Credits-Charged"]) == ("0", "0")
    row = await stack.ledger.request(stack.org, "req_real_4")
    assert row is not None
    assert (row["byok"], row["charged_millicredits"], row["list_price_millicredits"]) == (True, 0, 4500)
