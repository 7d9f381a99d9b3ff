"""The chain's literal order, the start-up model check and the metrics hook."""

from __future__ import annotations

import pytest

from policies import (
    Authenticate,
    InjectProviderKey,
    ReserveCredits,
    ResolveOrg,
    RewriteModel,
    default_policies,
)
from proxy.config.catalogue import Catalogue, check_policy
from proxy.config.policy import PolicyConfig, parse_policy
from proxy.config.settings import ConfigError
from proxy.directory.crypto import KeyBox
from proxy.gateway.tokens import TokenCounter
from proxy.ledger.types import Settlement
from proxy.ops.metrics import Metrics
from tests.fakes import FakeLedger
from tests.policies.policy_support import FakeDirectory


class NoKeys:
    async def get(self, key_hash: str) -> None:
        return None


def test_default_policies_in_order(
    policy: PolicyConfig, catalogue: Catalogue, keybox: KeyBox, counter: TokenCounter
) -> None:
    chain = default_policies(
        keys=NoKeys(), directory=FakeDirectory(), ledger=FakeLedger(), policy=policy, catalogue=catalogue,
        keybox=keybox, counter=counter,
    )
    assert [type(p) for p in chain] == [Authenticate, ResolveOrg, RewriteModel, InjectProviderKey, ReserveCredits]


def test_shipped_policy_names_only_configured_models(policy: PolicyConfig, catalogue: Catalogue) -> None:
    check_policy(policy, catalogue)


def test_policy_naming_unknown_models_stops_start_up(catalogue: Catalogue) -> None:
    policy = parse_policy("""
credits_per_usd: 1000
default_power_level: eco
power_levels:
  eco: {multiplier: 0.1, max_tokens: 10, models: [fake-small, fake-smal]}
tiers:
  free: {markup: 0, models: [gpt-5, "*"]}
""")
    with pytest.raises(ConfigError) as info:
        check_policy(policy, catalogue)
    assert str(info.value).splitlines() == [
        "CREDITGATE_POLICY_CONFIG: model 'fake-smal' is not in the LiteLLM config's model_list",
        "CREDITGATE_POLICY_CONFIG: model 'gpt-5' is not in the LiteLLM config's model_list",
    ]


def test_metrics_settled_counts_each_outcome_and_each_posted_charge_once() -> None:
    """The runtime wires `Metrics.settled` as the chain's record hook: every outcome is counted, and
    tokens and credits once per posted settlement (a replayed "already_settled" is not counted twice)."""
    metrics = Metrics(["fake-small"])
    settlement = Settlement(10, 20, 33, 40, "provider", "fake-small", "openai", None)
    for outcome in ("posted", "already_settled", "late_posted", "voided", "failed"):
        metrics.settled(outcome, settlement if outcome != "voided" else None)
    value = metrics.registry.get_sample_value
    assert value("creditgate_credits_charged_millicredits_total", {"model": "fake-small"}) == 66
    assert value("creditgate_tokens_total", {"model": "fake-small", "kind": "completion"}) == 40
    for outcome in ("posted", "already_settled", "late_posted", "voided", "failed"):
        assert value("creditgate_settlements_total", {"outcome": outcome}) == 1
    metrics.overage("fake-small", 7)
    assert value("creditgate_overage_millicredits_total", {"model": "fake-small"}) == 7
