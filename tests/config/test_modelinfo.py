"""LiteLLM's /model/info read exactly, and LiteLLM's wildcard routing rules (the shapes are LiteLLM
1.106.2's: research/litellm-captures/29_model_info.txt; tests/e2e/test_live_config.py reads a real one)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from proxy.config.modelinfo import (
    InfoRow,
    ModelInfoError,
    by_specificity,
    client_name,
    first_match,
    parse_model_info,
    pattern_regex,
)


def row(name: str, target: str, ident: str, **info: object) -> dict[str, object]:
    return {"model_name": name, "litellm_params": {"model": target, "use_in_pass_through": False},
            "model_info": {"id": ident, "db_model": False, **info}}


def test_prices_are_read_from_the_json_text_never_through_floats() -> None:
    # what LiteLLM writes for its cost map's floats: Python's shortest repr (orjson), exponents included
    raw = ('{"data": [{"model_name": "gpt-4o-mini", "litellm_params": {"model": "openai/gpt-4o-mini"}, '
           '"model_info": {"id": "abc", "mode": "chat", "input_cost_per_token": 1.5e-7, '
           '"output_cost_per_token": 6e-7, "output_cost_per_image": null, "max_input_tokens": 128000, '
           '"max_output_tokens": 16384, "supports_vision": true, "supports_function_calling": true, '
           '"supports_response_schema": true, "supports_audio_input": false, "supports_tool_choice": null}}]}')
    (parsed,) = parse_model_info(raw.encode())
    assert parsed == InfoRow(model_name="gpt-4o-mini", target="openai/gpt-4o-mini", id="abc",
                             prices=(Decimal("0.00000015"), Decimal("0.0000006"), None), mode="chat",
                             max_input_tokens=128000, max_output_tokens=16384,
                             capabilities=frozenset({"vision", "function_calling", "response_schema"}))
    assert Decimal(1.5e-7) != Decimal("0.00000015")  # what a float would have made of it
    # a price with more digits than a float keeps is kept whole
    (exact,) = parse_model_info(json.dumps({"data": [row("m", "openai/m", "i")]}).replace(
        '"db_model": false', '"input_cost_per_token": 0.000000123456789012345678901').encode())
    assert exact.prices[0] == Decimal("0.000000123456789012345678901")


@pytest.mark.parametrize("value", [-1, "cheap", True, "NaN", "Infinity", [], {"a": 1}])
def test_a_price_that_is_not_a_non_negative_number_is_unknown(value: object) -> None:
    (parsed,) = parse_model_info(json.dumps({"data": [row("m", "openai/m", "i", input_cost_per_token=value,
                                                           output_cost_per_token="0.000002")]}))
    assert parsed.prices == (None, Decimal("0.000002"), None)  # the model stays unpriced: fail closed


def test_rows_that_are_not_deployments_are_left_out_and_bad_counts_are_unknown() -> None:
    answer = {"data": [row("m", "openai/m", "i", max_input_tokens=0, max_output_tokens=True, mode=""),
                       {"model_name": "no-info", "litellm_params": {"model": "x"}},
                       row("", "openai/x", "j"), row("n", "openai/n", ""), "text", None]}
    assert parse_model_info(json.dumps(answer)) == (InfoRow("m", "openai/m", "i", (None, None, None)),)


@pytest.mark.parametrize(("raw", "message"), [
    (b"<html>", "model info is not JSON"), (b"\xff\xfe", "model info is not JSON"),
    (b'{"detail": "nope"}', "model info has no `data` list"), (b"[]", "model info has no `data` list"),
])
def test_an_answer_of_another_shape_is_one_error(raw: bytes, message: str) -> None:
    with pytest.raises(ModelInfoError, match=message):
        parse_model_info(raw)


def test_patterns_are_tried_in_litellms_order() -> None:
    assert pattern_regex("anthropic/claude-*") == r"anthropic/claude\-(.*)"
    regexes = by_specificity([pattern_regex(p) for p in ("*", "openai/*", "claude-*", "openai/gpt-4o*", "openai/*")])
    # longest first; at equal length (11) the one with more regex characters (the escaped "-")
    assert regexes == [r"openai/gpt\-4o(.*)", r"claude\-(.*)", r"openai/(.*)", "(.*)"]
    assert first_match(regexes, "openai/gpt-4o-mini") == r"openai/gpt\-4o(.*)"
    assert first_match(regexes, "openai/o3") == r"openai/(.*)"
    assert first_match(regexes, "claude-x") == r"claude\-(.*)"
    assert first_match(regexes[:3], "mistral/large") is None
    # equal length and complexity: the config's order (a stable sort)
    assert by_specificity(["b/(.*)", "a/(.*)"]) == ["b/(.*)", "a/(.*)"]


@pytest.mark.parametrize(("model_name", "target", "listed", "expected"), [
    ("anthropic/*", "anthropic/*", ("anthropic/claude-x", "anthropic/claude-x"), "anthropic/claude-x"),
    # LiteLLM lists `claude-*` -> `anthropic/claude-*` under provider names; clients send claude-x
    ("claude-*", "anthropic/claude-*", ("anthropic/claude-x", "anthropic/claude-x"), "claude-x"),
    ("*", "openai/*", ("openai/gpt-4o", "openai/gpt-4o"), "gpt-4o"),
    # a custom prefix is listed under the client's name already
    ("llmengine/*", "openai/*", ("llmengine/gpt-4o", "llmengine/gpt-4o"), "llmengine/gpt-4o"),
    ("claude-*", "anthropic/claude-*", ("mistral/large", "mistral/large"), None),
])
def test_the_name_a_client_sends_for_an_expanded_model(model_name: str, target: str, listed: tuple[str, str],
                                                       expected: str | None) -> None:
    assert client_name(model_name, target, InfoRow(listed[0], listed[1], "id", (None, None, None))) == expected
