"""The LiteLLM config's model_list as written: what each entry says, and nothing it does not say (model info
completes it: tests/config/test_catalogue.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.config.modellist import Entry, Price, parse_entries
from proxy.config.settings import ConfigError

CONFIG = """
model_list:
  - model_name: gpt-4o-mini                # an operator's config: no prices, no mode, no id
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/OPENAI_API_KEY}
  - model_name: "anthropic/*"
    litellm_params: {model: "anthropic/*"}
  - model_name: own
    litellm_params: {model: hosted_vllm/llama, custom_llm_provider: hosted_vllm, input_cost_per_token: 1e-7}
    model_info: {id: own-1, output_cost_per_token: "0.0000002", mode: chat, byok: optional, max_output_tokens: 512}
litellm_settings: {drop_params: true}
"""


def test_an_entry_is_what_the_config_says_and_none_where_it_is_silent() -> None:
    mini, wildcard, own = parse_entries(CONFIG)
    assert mini == Entry(index=0, model_name="gpt-4o-mini", target="openai/gpt-4o-mini", provider="openai", id=None,
                         price=Price(), byok="none", max_output_tokens=None, mode=None)
    assert (wildcard.wildcard, mini.wildcard, wildcard.provider, wildcard.price) == (True, False, "anthropic", Price())
    assert own == Entry(index=2, model_name="own", target="hosted_vllm/llama", provider="hosted_vllm", id="own-1",
                        price=Price(Decimal("1E-7"), Decimal("0.0000002"), None), byok="optional",
                        max_output_tokens=512, mode="chat")


def test_mistakes_are_one_line_each_naming_the_entry() -> None:
    text = """
model_list:
  - model_name: a
    litellm_params: {model: openai/a, output_cost_per_image: -1, max_output_tokens: 0}
  - model_name: b
    litellm_params: {model: openai/b}
    model_info: {id: same}
  - model_name: c
    litellm_params: {model: openai/c}
    model_info: {id: same}
  - just text
"""
    with pytest.raises(ConfigError) as info:
        parse_entries(text, source="l.yaml")
    assert str(info.value).splitlines() == [
        "l.yaml: model_list[0] (a): output_cost_per_image must be a non-negative number, got -1",
        "l.yaml: model_list[0] (a): max_output_tokens must be a positive integer, got 0",
        "l.yaml: model_list[3] must be a mapping",
        "l.yaml: model_info.id 'same' is used by more than one deployment",
    ]
