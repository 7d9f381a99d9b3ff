"""The policy file, the price catalogue, the charge formula, token counting and the BYOK key box."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.catalogue import Catalogue, Price, parse_catalogue
from proxy.config.policy import PolicyConfig, load_policy, parse_policy
from proxy.config.settings import ConfigError, Secret
from proxy.directory.crypto import KeyBox, UndecryptableKey, last4, mask
from proxy.gateway.tokens import IMAGE_PART_TOKENS, MESSAGE_OVERHEAD, REPLY_PRIMING, TokenCounter, bound, prompt_count
from proxy.ledger import tariffs


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


def test_catalogue_reads_prices_providers_and_byok(catalogue: Catalogue) -> None:
    mock = catalogue.get("mock-gpt")
    assert mock is not None  # prices in model_info
    assert mock.highest == Price(Decimal("0.0000005"), Decimal("0.0000015"), None)
    assert (mock.provider, mock.max_output_tokens, mock.byok_allowed) == ("openai", 4096, False)
    multi = catalogue.get("fake-multi")
    assert multi is not None and [d.id for d in multi.deployments] == ["fake-multi-a", "fake-multi-b"]
    assert multi.highest == Price(Decimal("0.000002"), Decimal("0.000004"), None)
    assert multi.price_for("fake-multi-a") == Price(Decimal("0.000001"), Decimal("0.000002"), None)
    assert multi.price_for("some-other-id") == multi.highest
    assert multi.price_for(None) == multi.highest
    byok_gpt, byok_only = catalogue.get("byok-gpt"), catalogue.get("byok-only")
    assert byok_gpt is not None and byok_gpt.byok_allowed and not byok_gpt.byok_required
    assert byok_only is not None and byok_only.byok_allowed and byok_only.byok_required
    embed, image, unpriced = catalogue.get("fake-embed"), catalogue.get("fake-image"), catalogue.get("unpriced-model")
    assert embed is not None and embed.mode == "embedding" and embed.priced()
    assert image is not None and image.mode == "image_generation" and image.highest.image == Decimal("0.04")
    assert unpriced is not None and not unpriced.priced()


def test_one_unpriced_deployment_makes_the_model_unpriced() -> None:
    text = """
model_list:
  - model_name: m
    litellm_params: {model: openai/a, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}
    model_info: {id: a, byok: optional}
  - model_name: m
    litellm_params: {model: anthropic/b}
    model_info: {id: b, byok: optional}
"""
    model = parse_catalogue(text).get("m")
    assert model is not None and not model.priced()
    assert not model.byok_allowed  # two providers: whose key would we send?


def test_catalogue_mistakes_are_one_line_each() -> None:
    text = """
model_list:
  - model_name: m
    litellm_params: {model: openai/a, input_cost_per_token: cheap}
    model_info: {id: a, byok: maybe}
  - model_name: n
    litellm_params: {api_key: x}
  - model_name: o
    litellm_params: {model: openai/o}
    model_info: {id: a}
"""
    with pytest.raises(ConfigError) as info:
        parse_catalogue(text, source="l.yaml")
    assert str(info.value).splitlines() == [
        "l.yaml: model_list[0] (m): input_cost_per_token must be a non-negative number, got 'cheap'",
        "l.yaml: model_list[0] (m): model_info.byok must be one of none, optional, required, got 'maybe'",
        "l.yaml: model_list[1] (n): litellm_params.model is required",
        "l.yaml: model_info.id 'a' is used by more than one deployment",
    ]


def test_charge_is_exact_and_rounds_up_once() -> None:
    price = Price(Decimal("0.0000025"), Decimal("0.00001"))
    usd = tariffs.usd_cost(price, 1234, 567)
    assert usd == Fraction(1234 * 25, 10**7) + Fraction(567, 10**5)
    # 0.008755 USD * 1000 * 1000 * 1.6 * 0.25 = 3502 exactly: no rounding up of an exact integer
    assert tariffs.charge(usd, Decimal(1000), Decimal("0.6"), Decimal("0.25")) == 3502
    assert tariffs.charge(usd, Decimal(1000), Decimal("0.4"), Decimal("0.1")) == 1226  # 1225.7 -> 1226
    assert tariffs.list_price(usd, Decimal(1000)) == 8755
    # 0.1 as a binary float would make 3 * 0.1 * 10 = 3.0000000000000004 -> 4
    assert tariffs.charge(Fraction(3, 1000), Decimal(1), Decimal(0), Decimal("0.1")) == 1


def test_millicredit_rates_are_exact(catalogue: Catalogue) -> None:
    small = catalogue.get("fake-small")
    assert small is not None
    rates = tariffs.millicredit_rates(small.highest, Decimal(1000), Decimal("1.4") * Decimal("0.1"))
    assert (rates.input, rates.output, rates.image) == (Decimal("0.007"), Decimal("0.014"), Decimal(0))
    listed = tariffs.millicredit_rates(small.highest, Decimal(1000))
    assert (listed.input, listed.output) == (Decimal("0.05"), Decimal("0.1"))


def test_token_counts_offline(counter: TokenCounter) -> None:
    assert counter.count("hello world") == 2
    assert counter.count("") == 0
    assert counter.count("<|endoftext|>") > 1  # ordinary text, never a special token or an error


def test_chat_prompt_count_and_bound(counter: TokenCounter) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hello world"}, {"type": "image_url"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    tools = counter.count('[[{"type":"function","function":{"name":"f"}}]]')
    expected = (
        REPLY_PRIMING
        + 2 * MESSAGE_OVERHEAD
        + counter.count("system")
        + counter.count("Be brief.")
        + counter.count("user")
        + counter.count("hello world")
        + IMAGE_PART_TOKENS
        + tools
    )
    assert counter.prompt_tokens("chat/completions", body) == expected
    assert counter.prompt_bound("chat/completions", body) == -(-expected * 3 // 2) + 64
    assert bound(0) == 64 and bound(3) == 69


def test_completion_and_embedding_prompts(counter: TokenCounter) -> None:
    assert counter.prompt_tokens("completions", {"prompt": [1, 2, 3]}) == 3  # one token array
    assert counter.prompt_tokens("completions", {"prompt": ["hello world", "hello"]}) == 3
    assert prompt_count("completions", {"prompt": ["a", "b"]}) == 2
    assert prompt_count("completions", {"prompt": [1, 2]}) == 1
    assert counter.prompt_tokens("embeddings", {"input": [[5, 6], [7]]}) == 3
    assert counter.prompt_tokens("embeddings", {"input": "hello world"}) == 2


def test_byok_keys_survive_rotation() -> None:
    old, new = Secret(Fernet.generate_key().decode()), Secret(Fernet.generate_key().decode())
    stored = KeyBox([old]).encrypt(Secret("sk-provider-1234567890"))
    rotated_box = KeyBox([new, old])
    assert rotated_box.decrypt(stored).reveal() == "sk-provider-1234567890"
    rewrapped = rotated_box.rotate(stored)
    assert KeyBox([new]).decrypt(rewrapped).reveal() == "sk-provider-1234567890"
    with pytest.raises(UndecryptableKey):
        KeyBox([new]).decrypt(stored)


def test_masking_shows_the_last_four_only() -> None:
    assert mask(Secret("sk-provider-1234567890")) == "****7890"
    assert last4(Secret("short")) == ""
    box = KeyBox([Secret(Fernet.generate_key().decode())])
    assert repr(box.decrypt(box.encrypt(Secret("sk-provider-1234567890")))) == "Secret('**********')"


async def test_prompts_over_the_encoders_limits_are_counted(counter: TokenCounter) -> None:
    text = "lorem ipsum dolor " * 70_000  # 1.26 M characters: bpe-openai alone refuses >= 1 M
    body = {"messages": [{"role": "user", "content": text}]}
    sync = counter.prompt_tokens("chat/completions", body)
    assert sync == await counter.prompt_tokens_async("chat/completions", body)  # counted in a thread
    # 3 tokens a repeat; each of the 32 pieces may split a word (one more token at most)
    assert 210_000 <= sync - REPLY_PRIMING - MESSAGE_OVERHEAD - 1 <= 210_000 + 32


def test_provider_is_the_model_prefix_or_custom_llm_provider() -> None:
    text = """
model_list:
  - {model_name: a, litellm_params: {model: anthropic/claude-x}}
  - {model_name: b, litellm_params: {model: my-model, custom_llm_provider: together_ai}}
  - {model_name: c, litellm_params: {model: gpt-4o}}
"""
    catalogue = parse_catalogue(text)
    assert [catalogue.models[n].provider for n in "abc"] == ["anthropic", "together_ai", "openai"]


@settings(max_examples=300, deadline=None)
@given(
    prices=st.tuples(*[st.one_of(st.none(), st.decimals(min_value=0, max_value=1, places=12)) for _ in range(3)]),
    markup=st.decimals(min_value=0, max_value=3, places=20),
    multiplier=st.decimals(min_value=0, max_value=2, places=20),
    credits_per_usd=st.sampled_from([Decimal(1000), Decimal("1"), Decimal("333.3")]),
    units=st.tuples(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 100)),
)
def test_integer_tariff_equals_the_exact_formula(
    prices: tuple[Decimal | None, Decimal | None, Decimal | None],
    markup: Decimal,
    multiplier: Decimal,
    credits_per_usd: Decimal,
    units: tuple[int, int, int],
) -> None:
    price = Price(*prices)
    usd = tariffs.usd_cost(price, *units[:2], images=units[2])
    tariff = tariffs.Tariff.of(price, credits_per_usd, tariffs.factor(markup, multiplier))
    assert tariff.charge(*units) == tariffs.charge(usd, credits_per_usd, markup, multiplier)
    assert tariffs.Tariff.of(price, credits_per_usd).charge(*units) == tariffs.list_price(usd, credits_per_usd)


def test_factor_and_rates_never_round() -> None:
    markup, multiplier = Decimal("0.1234567890123456789"), Decimal("1.000000000000000000001")
    exact = Fraction(1) + Fraction(markup)
    assert Fraction(tariffs.factor(markup, multiplier)) == exact * Fraction(multiplier)  # 40 digits
    rates = tariffs.millicredit_rates(Price(Decimal("0.0000000123456789")), Decimal("333.3"), multiplier)
    assert Fraction(rates.input) == Fraction("0.0000000123456789") * Fraction("333.3") * 1000 * Fraction(multiplier)


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
        "p.yaml: tiers.free.'colour' is not a known setting (expected one of markup, models, rpm, tpm)",
    ]


def test_litellm_config_sections_and_entries_are_checked_by_name() -> None:
    text = """
model_lst:
  - model_name: m
litelm_settings: {drop_params: true}
"""
    with pytest.raises(ConfigError) as info:
        parse_catalogue(text, source="l.yaml")
    assert str(info.value).splitlines() == [
        "l.yaml: 'model_lst' is not a known setting (did you mean 'model_list'?)",
        "l.yaml: 'litelm_settings' is not a known setting (did you mean 'litellm_settings'?)",
        "l.yaml: model_list must be a non-empty list",
    ]
    entry = """
model_list:
  - model_name: m
    litellm_params: {model: openai/a}
    model_inf: {id: a}
router_settings: {routing_strategy: simple-shuffle}
"""
    with pytest.raises(ConfigError) as info:
        parse_catalogue(entry, source="l.yaml")
    assert str(info.value) == "l.yaml: model_list[0]: 'model_inf' is not a known setting (did you mean 'model_info'?)"


@pytest.mark.parametrize("parse", [parse_policy, parse_catalogue])
def test_a_yaml_syntax_error_gives_the_line_and_column(parse: Any) -> None:
    text = "model_list:\n  - model_name: m\n    litellm_params: {model: openai/a\n"
    with pytest.raises(ConfigError) as info:
        parse(text, source="x.yaml")
    assert str(info.value).startswith("x.yaml: not valid YAML: line 4, column 1: ")
