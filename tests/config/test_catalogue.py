"""The model catalogue from the LiteLLM config: prices, providers, BYOK modes, and one line per mistake."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.config.catalogue import Catalogue, Price, parse_catalogue
from proxy.config.settings import ConfigError


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


def test_provider_is_the_model_prefix_or_custom_llm_provider() -> None:
    text = """
model_list:
  - {model_name: a, litellm_params: {model: anthropic/claude-x}}
  - {model_name: b, litellm_params: {model: my-model, custom_llm_provider: together_ai}}
  - {model_name: c, litellm_params: {model: gpt-4o}}
"""
    catalogue = parse_catalogue(text)
    assert [catalogue.models[n].provider for n in "abc"] == ["anthropic", "together_ai", "openai"]


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
