"""PinConfig: a request is held and settled under the configuration current at its start, whatever a
reload swaps in meanwhile; the next request runs under the new one. Expected charges come from the
contract's formula over the prices' text (tests/policies/policy_support.py), not from the catalogue."""

from __future__ import annotations

from pathlib import Path

from policies.config import PinConfig
from policies.model import RewriteModel
from proxy.config.catalogue import Catalogue, parse_catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.policy import PolicyConfig, parse_policy
from proxy.directory.types import ApiKey
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.tokens import TokenCounter
from proxy.ledger.types import HoldRequest
from tests.fakes import FakeLedger
from tests.policies.policy_support import MESSAGES, PRICES, answered, credits_for, expected, make_ctx, member

ROOT = Path(__file__).resolve().parents[2]
DEARER = ("0.0000012", "0.0000024")  # fake-medium at twice its shipped price


def dearer(policy: PolicyConfig) -> Snapshot:
    """The shipped configuration after an operator doubled fake-medium's price and the starter markup."""
    text = (ROOT / "litellm_config.yaml").read_text()
    text = text.replace("input_cost_per_token: 0.0000006\n", f"input_cost_per_token: {DEARER[0]}\n", 1)
    text = text.replace("output_cost_per_token: 0.0000012\n", f"output_cost_per_token: {DEARER[1]}\n", 1)
    policy_text = (ROOT / "policy.yaml").read_text().replace("starter:      {markup: 0.4,", "starter: {markup: 0.8,")
    return Snapshot.of(parse_policy(policy_text), parse_catalogue(text))


def request() -> RequestContext:
    ctx = make_ctx({"model": "fake-medium", "messages": MESSAGES, "max_tokens": 50}, x_power_level="balanced")
    ctx.key, ctx.membership = ApiKey("key_1", "usr_1", None, False), member("org_a", tier="starter")
    return ctx


async def test_a_request_settles_at_the_prices_it_was_held_at(policy: PolicyConfig, catalogue: Catalogue,
                                                              counter: TokenCounter, ledger: FakeLedger) -> None:
    old, new = Snapshot.of(policy, catalogue), dearer(policy)
    assert old.version != new.version
    live = LiveConfig(old)
    pin, rewrite = PinConfig(live), RewriteModel(policy, catalogue)
    credits = credits_for(ledger, policy, catalogue, counter)

    first = request()
    await pin(first)
    await rewrite(first)
    live.current = new  # a reload lands while the first request is on its way
    async with first.cleanup:
        await credits(first)
        await answered(Usage(300, 40))(first)
    second = request()
    second.request_id = "req_second"
    await pin(second)
    async with second.cleanup:
        await rewrite(second)
        await credits(second)
        await answered(Usage(300, 40))(second)

    held_first, held_second = ledger.holds
    assert (first.config, second.config) == (old, new)
    assert (held_first.price_version, held_second.price_version) == (old.version, new.version)
    (_, _, charged_first), (_, _, charged_second) = ledger.settled
    assert charged_first.charge == expected(PRICES["fake-medium"], 300, 40, "starter", "balanced")
    assert charged_second.charge == expected(DEARER, 300, 40, "enterprise", "balanced")  # its markup, 0.8
    assert held_first.amount < held_second.amount


async def test_a_policy_built_with_a_fixed_configuration_pins_it(policy: PolicyConfig, catalogue: Catalogue,
                                                                 counter: TokenCounter, ledger: FakeLedger) -> None:
    """Without a PinConfig in front (one policy under test), the policy's own configuration is pinned."""
    ctx = request()
    await RewriteModel(policy, catalogue)(ctx)
    assert ctx.config is not None and ctx.config.version == Snapshot.of(policy, catalogue).version
    async with ctx.cleanup:
        await credits_for(ledger, policy, catalogue, counter)(ctx)
    hold: HoldRequest = ledger.holds[0]
    assert hold.price_version == ctx.config.version
