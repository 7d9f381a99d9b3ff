"""The body allowlist (proxy/gateway/params.py) and the policy file's `forward_params`, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.policy import parse_policy
from proxy.config.settings import ConfigError
from proxy.errors import ProxyError
from proxy.gateway.params import OPENAI_PARAMS, SILENTLY_DROPPED, check_forward_params, forwardable, silently_dropped

POLICY = """
credits_per_usd: 1000
default_power_level: eco
power_levels:
  eco: {multiplier: 0.1, max_tokens: 100, models: [a]}
tiers:
  free: {markup: 0, models: ["*"]}
"""


def refused(route: str, body: dict[str, Any], extra: frozenset[str] = frozenset()) -> tuple[int, str | None, str]:
    with pytest.raises(ProxyError) as info:
        forwardable(route, body, extra)
    return info.value.status, info.value.code, str(info.value.param)


def test_openai_parameters_pass_and_credentials_routing_and_logging_are_dropped() -> None:
    body = {"model": "m", "messages": [], "temperature": 0.2, "tools": [{"type": "function"}], "user": "u",
            "api_key": "sk-x", "api_base": "http://x", "metadata": {}, "litellm_metadata": {}, "_private": 1,
            "headers": {"Authorization": "x"}, "provider_specific_header": {}, "aws_region_name": "x",
            "input_cost_per_token": 0, "custom_cost_per_token": 0, "mock_testing_rate_limit_error": True}
    assert forwardable("chat/completions", body, frozenset()) == {
        "model": "m", "messages": [], "temperature": 0.2, "tools": [{"type": "function"}], "user": "u"}


@pytest.mark.parametrize(("route", "body", "param"), [
    ("chat/completions", {"additional_drop_params": ["max_tokens"]}, "additional_drop_params"),
    ("chat/completions", {"drop_params": True}, "drop_params"),
    ("chat/completions", {"allowed_openai_params": ["x"]}, "allowed_openai_params"),
    ("chat/completions", {"top_k": 3}, "top_k"),
    ("chat/completions", {"audio": {"voice": "alloy"}}, "audio"),
    ("chat/completions", {"web_search_options": {}}, "web_search_options"),
    ("chat/completions", {"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ("chat/completions", {"service_tier": "priority"}, "service_tier"),
    ("chat/completions", {"modalities": ["audio"]}, "modalities"),
    ("chat/completions", {"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
    ("chat/completions", {"tools": {"type": "function"}}, "tools"),
    ("chat/completions", {"stream_options": {"include_usage": True, "nope": 1}}, "stream_options.nope"),
    ("completions", {"messages": []}, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {}}]}]}, "messages[0].content[1].type"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "file"}]}]},
     "messages[0].content[0].type"),
    ("chat/completions", {"messages": [{"role": "user", "content": ["text"]}]}, "messages[0].content[0].type"),
    ("embeddings", {"n": 2}, "n"),
    ("images/generations", {"partial_images": 2}, "partial_images"),
    ("images/generations", {"max_tokens": 10}, "max_tokens"),
])
def test_anything_else_is_400_naming_the_field(route: str, body: dict[str, Any], param: str) -> None:
    assert refused(route, {"model": "m", **body}) == (400, "invalid_value", param)


def test_a_long_unknown_name_is_shortened_in_the_error() -> None:
    status, code, param = refused("chat/completions", {"x" * 500: 1})
    assert (status, code, param) == (400, "invalid_value", "x" * 64 + "...")


def test_forward_params_admit_the_operators_provider_parameters() -> None:
    extra = frozenset({"top_k", "web_search_options"})
    body = {"model": "m", "top_k": 5, "web_search_options": {}}
    assert forwardable("chat/completions", body, extra) == body


def test_every_route_allowlist_has_the_model_and_never_a_dropped_field() -> None:
    for route, names in OPENAI_PARAMS.items():
        assert "model" in names, route
        assert not {n for n in names if silently_dropped(n)}, route
    assert "metadata" in SILENTLY_DROPPED  # an OpenAI parameter LiteLLM reads as its own metadata


def test_policy_forward_params_global_and_per_model() -> None:
    policy = parse_policy(POLICY + 'forward_params:\n  "*": [top_k]\n  a: [thinking]\n')
    assert policy.forwarded("a") == frozenset({"top_k", "thinking"})
    assert policy.forwarded("b") == frozenset({"top_k"})
    assert "a" in policy.models()
    assert parse_policy(POLICY).forwarded("a") == frozenset()


@pytest.mark.parametrize(("entry", "problem"), [
    ('"*": [api_base]', "forward_params.*: 'api_base' cannot be forwarded"),
    ('"*": [headers]', "forward_params.*: 'headers' cannot be forwarded"),
    ('"*": [litellm_metadata]', "forward_params.*: 'litellm_metadata' cannot be forwarded"),
    ("a: [max_new_tokens]", "forward_params.a: 'max_new_tokens' cannot be forwarded"),
    ("a: [num_predict]", "forward_params.a: 'num_predict' cannot be forwarded"),
    ("a: [stream]", "forward_params.a: 'stream' cannot be forwarded"),
])
def test_policy_forward_params_refuse_what_would_reopen_the_hole(entry: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_forward_params(parse_policy(POLICY + f"forward_params:\n  {entry}\n", source="policy.yaml"),
                             source="policy.yaml")
    assert str(info.value).startswith(f"policy.yaml: {problem}")


def test_policy_forward_params_must_be_lists_of_names() -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(POLICY + "forward_params:\n  a: top_k\n", source="policy.yaml")
    assert str(info.value) == "policy.yaml: forward_params.a must be a list of parameter names"
