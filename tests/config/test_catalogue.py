"""The model catalogue from the LiteLLM config: prices, providers, BYOK modes, and one line per mistake."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from proxy.config.catalogue import Catalogue, Price, check_policy, parse_catalogue
from proxy.config.modelinfo import InfoRow
from proxy.config.policy import parse_policy
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


# ---------------------------------------------------------------- completed by LiteLLM's model info

OPERATOR = """
model_list:
  - model_name: gpt-4o-mini                  # nothing but the model: LiteLLM's cost map says the rest
    litellm_params: {model: openai/gpt-4o-mini}
  - model_name: half                         # the config's input price and cap win; model info fills the rest
    litellm_params: {model: openai/gpt-4o, input_cost_per_token: "0.000001"}
    model_info: {id: half-1, max_output_tokens: 100}
  - model_name: embed                        # no mode in the config: model info's
    litellm_params: {model: openai/text-embedding-3-small}
  - model_name: mystery                      # LiteLLM cannot price it either
    litellm_params: {model: openai/mystery}
  - model_name: "anthropic/*"
    litellm_params: {model: "anthropic/*"}
  - model_name: "claude-*"
    litellm_params: {model: "anthropic/claude-*"}
  - model_name: "anthropic/claude-pinned"    # an exact name beats every wildcard, as in LiteLLM's router
    litellm_params: {model: anthropic/claude-pinned, input_cost_per_token: 1, output_cost_per_token: 2}
  - model_name: "flat/*"                     # a wildcard the config prices itself: any name under it
    litellm_params: {model: "hosted_vllm/*", input_cost_per_token: 0.0000001, output_cost_per_token: 0.0000002}
"""
P = (Decimal("0.00000015"), Decimal("0.0000006"), None)


def info_row(name: str, target: str, ident: str, prices: tuple[Decimal | None, ...] = (None, None, None),
             **fields: Any) -> InfoRow:
    return InfoRow(name, target, ident, (prices[0], prices[1], prices[2]), **fields)


INFO = (
    info_row("gpt-4o-mini", "openai/gpt-4o-mini", "h-mini", P, mode="chat", max_input_tokens=128000,
             max_output_tokens=16384, capabilities=frozenset({"vision"})),
    info_row("half", "openai/gpt-4o", "half-1", (Decimal("0.000001"), Decimal("0.00001"), None), mode="chat",
             max_output_tokens=16384),
    info_row("embed", "openai/text-embedding-3-small", "h-embed", (Decimal("2E-8"), Decimal("0"), None),
             mode="embedding"),
    info_row("mystery", "openai/mystery", "h-mystery"),
    # anthropic/* expanded to two models of the cost map, every row with the wildcard's id
    info_row("anthropic/claude-x", "anthropic/claude-x", "h-any", (Decimal("0.000003"), Decimal("0.000015"), None),
             mode="chat"),
    info_row("anthropic/claude-pinned", "anthropic/claude-pinned", "h-any",
             (Decimal("0.000005"), Decimal("0.000025"), None), mode="chat"),
    # claude-* -> anthropic/claude-*: LiteLLM lists provider names
    info_row("anthropic/claude-x", "anthropic/claude-x", "h-claude", (Decimal("0.000003"), Decimal("0.000015"), None),
             mode="chat"),
    info_row("anthropic/claude-pinned", "anthropic/claude-pinned", "h-claude",
             (Decimal("0.000005"), Decimal("0.000025"), None), mode="chat"),
    # the exact entry, its prices the config's
    info_row("anthropic/claude-pinned", "anthropic/claude-pinned", "h-pinned", (Decimal("1"), Decimal("2"), None),
             mode="chat"),
    info_row("flat/*", "hosted_vllm/*", "h-flat"),  # no models known: the deployment itself
)


def test_model_info_completes_what_the_config_leaves_out_and_records_where_prices_came_from() -> None:
    catalogue = parse_catalogue(OPERATOR, info=INFO)
    assert (catalogue.complete, catalogue.with_model_info, catalogue.missing) == (True, True, ())
    mini = catalogue.models["gpt-4o-mini"]
    (d,) = mini.deployments
    assert (d.id, d.price, d.mode, d.max_output_tokens, d.max_input_tokens, d.capabilities) == (
        "h-mini", Price(*P), "chat", 16384, 128000, frozenset({"vision"}))
    assert d.sources == (("input_cost_per_token", "litellm_model_info"),
                         ("output_cost_per_token", "litellm_model_info"))
    assert mini.price_for("h-mini") == Price(*P)  # settled at the deployment LiteLLM says answered
    (half,) = catalogue.models["half"].deployments
    assert (half.price, half.max_output_tokens) == (Price(Decimal("0.000001"), Decimal("0.00001")), 100)
    assert half.sources == (("input_cost_per_token", "config"), ("output_cost_per_token", "litellm_model_info"))
    embed = catalogue.models["embed"]
    assert (embed.mode, embed.serves("embeddings"), embed.serves("chat/completions")) == ("embedding", True, False)
    mystery = catalogue.models["mystery"]
    assert (mystery.priced(), mystery.serves("chat/completions")) == (False, True)  # 403 model_not_priced


def test_a_wildcard_serves_what_it_expands_to_each_priced_on_its_own() -> None:
    catalogue = parse_catalogue(OPERATOR, info=INFO)
    x = catalogue.models["anthropic/claude-x"]
    assert [(d.id, d.price) for d in x.deployments] == [
        ("h-any", Price(Decimal("0.000003"), Decimal("0.000015")))]
    assert x.deployments[0].sources[0] == ("input_cost_per_token", "litellm_model_info")
    # the name clients send through claude-* is claude-x, served by that route's deployment
    assert [d.id for d in catalogue.models["claude-x"].deployments] == ["h-claude"]
    # the exact entry wins over anthropic/*'s expansion of the same name
    assert [(d.id, d.price.input) for d in catalogue.models["anthropic/claude-pinned"].deployments] == [
        ("h-pinned", Decimal(1))]
    assert catalogue.models["claude-pinned"].deployments[0].id == "h-claude"
    # a name the expansion did not list is routed as LiteLLM would: priced only by the config, if at all
    new = catalogue.get("anthropic/claude-next")
    assert new is not None and ([d.id for d in new.deployments], new.priced()) == (["h-any"], False)
    flat = catalogue.get("flat/anything")
    assert flat is not None and flat.highest == Price(Decimal("1E-7"), Decimal("2E-7"))
    assert [d.id for d in flat.deployments] == ["h-flat"]
    assert catalogue.get("other/model") is None
    assert "anthropic/claude-next" not in catalogue.models  # listed models are the expansions only


def test_two_deployments_of_one_wildcard_are_both_held_for() -> None:
    text = """
model_list:
  - {model_name: "openai/*", litellm_params: {model: "openai/*", api_base: "http://a"}, model_info: {id: a}}
  - {model_name: "openai/*", litellm_params: {model: "openai/*", api_base: "http://b"}, model_info: {id: b}}
"""
    cheap, dear = (Decimal("0.000001"), Decimal("0.000002"), None), (Decimal("0.000003"), Decimal("0.000001"), None)
    catalogue = parse_catalogue(text, info=(info_row("openai/m", "openai/m", "a", cheap),
                                            info_row("openai/m", "openai/m", "b", dear),
                                            info_row("openai/only-a", "openai/only-a", "a", cheap)))
    m = catalogue.models["openai/m"]
    assert m.highest == Price(Decimal("0.000003"), Decimal("0.000002"))  # held at the highest, per component
    assert m.price_for("a") == Price(Decimal("0.000001"), Decimal("0.000002"))
    # LiteLLM routes openai/only-a to both deployments; b's price for it is unknown: not priced
    only = catalogue.models["openai/only-a"]
    assert ([d.id for d in only.deployments], only.priced()) == (["a", "b"], False)


def test_without_a_mode_a_model_serves_every_route_its_prices_bound() -> None:
    text = """
model_list:
  - {model_name: tokens, litellm_params: {model: openai/t, input_cost_per_token: 1e-6, output_cost_per_token: 2e-6}}
  - {model_name: input-only, litellm_params: {model: openai/i, input_cost_per_token: 1e-6}}
  - {model_name: images, litellm_params: {model: openai/p, output_cost_per_image: "0.04"}}
  - {model_name: chat, litellm_params: {model: openai/c, input_cost_per_token: 1e-6, output_cost_per_token: 2e-6},
     model_info: {mode: chat}}
"""
    catalogue = parse_catalogue(text)
    routes = ("chat/completions", "completions", "embeddings", "images/generations")
    served = {name: [r for r in routes if model.serves(r)] for name, model in catalogue.models.items()}
    assert served == {"tokens": ["chat/completions", "completions", "embeddings"], "input-only": ["embeddings"],
                      "images": ["images/generations"], "chat": ["chat/completions", "completions"]}


def test_until_model_info_is_read_the_models_that_need_it_are_unpriced_and_the_catalogue_incomplete() -> None:
    before = parse_catalogue(OPERATOR)
    assert (before.complete, before.with_model_info) == (False, False)
    assert not before.models["gpt-4o-mini"].priced()
    assert before.models["half"].priced_for("embeddings") and not before.models["half"].priced_for("completions")
    assert before.get("anthropic/claude-x") is not None  # served by the wildcard, not priced yet
    assert not parse_catalogue(OPERATOR).get("anthropic/claude-x").priced()  # type: ignore[union-attr]
    # a config that prices every deployment itself needs no model info to be complete
    assert parse_catalogue("model_list:\n  - {model_name: m, litellm_params: {model: openai/m, "
                           "input_cost_per_token: 1, output_cost_per_token: 1}}").complete
    # model info that does not list a deployment the config needs priced: read, but that one is missing
    partial = parse_catalogue(OPERATOR, info=INFO[1:])
    assert (partial.complete, partial.missing) == (True, ("gpt-4o-mini",))


def test_the_policy_may_name_a_model_a_wildcard_serves() -> None:
    catalogue = parse_catalogue(OPERATOR)  # before model info: the wildcard's names are still known to exist
    check_policy(parse_policy(POLICY_NAMING.format(model="claude-new")), catalogue)
    with pytest.raises(ConfigError, match="model 'gtp-4o-mini' is not in the LiteLLM config's model_list"):
        check_policy(parse_policy(POLICY_NAMING.format(model="gtp-4o-mini")), catalogue)


POLICY_NAMING = """
credits_per_usd: 1000
default_power_level: one
power_levels: {{one: {{multiplier: 1, max_tokens: 100, models: [{model}]}}}}
tiers: {{starter: {{markup: 0, models: ["*"]}}}}
"""
