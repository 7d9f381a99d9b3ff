"""The policy file: exact decimals from their text, one line per mistake, the nearest valid name for a misspelt key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.config.catalogue import parse_catalogue
from proxy.config.policy import PolicyConfig, load_policy, parse_policy
from proxy.config.settings import ConfigError


def test_policy_numbers_are_exact_decimals_from_their_text(policy: PolicyConfig) -> None:
    assert policy.credits_per_usd == Decimal(1000)
    assert policy.hold_ttl_seconds == 120
    assert policy.default_power_level == "balanced"
    eco, balanced, precision = policy.power_levels
    assert (eco.name, eco.multiplier, eco.max_tokens) == ("eco", Decimal("0.1"), 2000)
    assert str(eco.multiplier) == "0.1"  # from the text, not the binary float 0.1000000000000000055...
    assert (balanced.multiplier, precision.multiplier) == (Decimal("0.25"), Decimal("1.0"))
    assert [t.markup for t in policy.tiers] == [Decimal("0.0"), Decimal("0.4"), Decimal("0.6"), Decimal("0.8")]
    free = policy.tier("free")
    assert free is not None and free.allows("fake-small") and not free.allows("fake-large")
    starter = policy.tier("starter")
    assert starter is not None and starter.allows("anything")


def test_multiplier_of_a_model_the_level_does_not_list(policy: PolicyConfig) -> None:
    eco, balanced, precision = policy.power_levels
    assert policy.multiplier_for(eco, "fake-small") == Decimal("0.1")
    assert policy.multiplier_for(eco, "fake-large") == Decimal("1.0")  # no eco price for a precision model
    assert policy.multiplier_for(precision, "fake-small") == Decimal("0.1")
    assert policy.multiplier_for(balanced, "fake-embed") == Decimal(1)  # no level lists it


def test_policy_mistakes_are_one_line_each() -> None:
    text = """
credits_per_usd: lots
hold_ttl_seconds: 1
sweep_interval_seconds: never
default_power_level: turbo
power_levels:
  eco: {multiplier: -0.1, max_tokens: 0, models: []}
tiers:
  free: {markup: x, models: [a]}
"""
    with pytest.raises(ConfigError) as info:
        parse_policy(text, source="p.yaml")
    assert str(info.value).splitlines() == [
        "p.yaml: credits_per_usd must be a number, got 'lots'",
        "p.yaml: hold_ttl_seconds must be an integer of at least 3, got 1",
        "p.yaml: sweep_interval_seconds must be a number, got 'never'",
        "p.yaml: power_levels.eco.multiplier must be at least 0, got -0.1",
        "p.yaml: power_levels.eco.max_tokens must be a positive integer, got 0",
        "p.yaml: power_levels.eco.models must be a non-empty list of model names",
        "p.yaml: tiers.free.markup must be a number, got 'x'",
        "p.yaml: default_power_level must name one of power_levels, got 'turbo'",
    ]


def test_unreadable_policy_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^CREDITGATE_POLICY_CONFIG: cannot read"):
        load_policy(tmp_path / "missing.yaml")


def test_a_misspelt_key_names_the_nearest_valid_one() -> None:
    text = """
credits_per_usd: 1000
hold_ttl_secnds: 60
default_power_level: eco
power_levels:
  eco: {multiplier: 0.1, max_token: 100, models: [a]}
tiers:
  free: {markup: 0, models: ["*"], rmp: 5, colour: red}
"""
    with pytest.raises(ConfigError) as info:
        parse_policy(text, source="p.yaml")
    assert str(info.value).splitlines() == [
        "p.yaml: 'hold_ttl_secnds' is not a known setting (did you mean 'hold_ttl_seconds'?)",
        "p.yaml: power_levels.eco.'max_token' is not a known setting (did you mean 'max_tokens'?)",
        "p.yaml: power_levels.eco.max_tokens must be a positive integer, got None",
        "p.yaml: tiers.free.'rmp' is not a known setting (did you mean 'rpm'?)",
        "p.yaml: tiers.free.'colour' is not a known setting (expected one of downgrade, markup, models, org_rpm, "
        "org_tpm, rpm, tpm)",
    ]


@pytest.mark.parametrize("parse", [parse_policy, parse_catalogue])
def test_a_yaml_syntax_error_gives_the_line_and_column(parse: Any) -> None:
    text = "model_list:\n  - model_name: m\n    litellm_params: {model: openai/a\n"
    with pytest.raises(ConfigError) as info:
        parse(text, source="x.yaml")
    assert str(info.value).startswith("x.yaml: not valid YAML: line 4, column 1: ")
