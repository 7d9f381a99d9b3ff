"""The snapshot a request runs under, and its price version: the hash of exactly what charges are computed
from, the same however the numbers are spelt, different when any of them changes."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal

from proxy.config.catalogue import Catalogue, parse_catalogue
from proxy.config.live import LiveConfig, Snapshot, price_table
from proxy.config.modelinfo import InfoRow
from proxy.config.policy import PolicyConfig, parse_policy

LITELLM = """
model_list:
  - model_name: m
    litellm_params: {{model: openai/m, input_cost_per_token: {input}, output_cost_per_token: "0.000002"}}
    model_info: {{id: m-1{mode}}}
  - model_name: info
    litellm_params: {{model: openai/gpt-4o-mini}}
  - model_name: "anthropic/*"
    litellm_params: {{model: "anthropic/*"}}
"""
POLICY = """
credits_per_usd: {cpu}
default_power_level: eco
power_levels: {{eco: {{multiplier: 0.1, max_tokens: 100, models: [m]}}}}
tiers: {{free: {{markup: 0.0, models: ["*"], rpm: {rpm}}}, starter: {{markup: {markup}, models: ["*"]}}}}
"""
INFO = (InfoRow("info", "openai/gpt-4o-mini", "h-info", (Decimal("1.5E-7"), Decimal("6E-7"), None), mode="chat"),)


def snapshot(*, input: str = "0.000001", mode: str = "", cpu: str = "1000", markup: str = "0.4", rpm: int = 60,
             info: tuple[InfoRow, ...] | None = INFO) -> Snapshot:
    catalogue: Catalogue = parse_catalogue(LITELLM.format(input=input, mode=mode), info=info)
    policy: PolicyConfig = parse_policy(POLICY.format(cpu=cpu, markup=markup, rpm=rpm))
    return Snapshot.of(policy, catalogue)


def test_the_version_hashes_the_canonical_table() -> None:
    first = snapshot()
    assert first.version == "pv_" + hashlib.sha256(first.prices.encode()).hexdigest()[:16]
    table = json.loads(first.prices)
    assert json.dumps(table, sort_keys=True, separators=(",", ":")) == first.prices  # canonical already
    assert table == {
        "credits_per_usd": "1000",
        "tiers": {"free": {"markup": "0"}, "starter": {"markup": "0.4"}},
        "power_levels": {"eco": {"multiplier": "0.1", "models": ["m"]}},
        "models": {
            "m": [{"deployment": "m-1", "provider": "openai", "input_cost_per_token": "0.000001",
                   "output_cost_per_token": "0.000002", "output_cost_per_image": None,
                   "source": {"input_cost_per_token": "config", "output_cost_per_token": "config"}}],
            "info": [{"deployment": "h-info", "provider": "openai", "input_cost_per_token": "0.00000015",
                      "output_cost_per_token": "0.0000006", "output_cost_per_image": None,
                      "source": {"input_cost_per_token": "litellm_model_info",
                                 "output_cost_per_token": "litellm_model_info"}}]},
        "wildcard_routes": {"anthropic/(.*)": [{"model_name": "anthropic/*", "model": "anthropic/*",
                                                "deployment": None, "input_cost_per_token": None,
                                                "output_cost_per_token": None, "output_cost_per_image": None}]},
    }


def test_one_price_spelt_two_ways_is_one_version_and_only_what_charges_depend_on_counts() -> None:
    base = snapshot()
    assert snapshot(input="1e-6").version == base.version
    assert snapshot(input="0.0000010").version == base.version
    assert snapshot(mode=", mode: chat").version == base.version  # which routes it serves is not a price
    assert snapshot(rpm=5).version == base.version  # nor is a rate limit
    others = {snapshot(input="0.0000011").version, snapshot(cpu="1001").version, snapshot(markup="0.5").version,
              snapshot(info=None).version, base.version}
    assert len(others) == 5  # a price, credits per USD, a markup, prices from model info: each its own version


def test_the_live_configuration_is_one_attribute() -> None:
    first, second = snapshot(), snapshot(markup="0.5")
    live = LiveConfig(first)
    assert live.current is first
    live.current = second
    assert live.current is second
    assert price_table(second.policy, second.catalogue) == second.prices
