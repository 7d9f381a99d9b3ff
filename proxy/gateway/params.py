"""What a client may send in a billed request body, and the body LiteLLM receives (an allowlist).

LiteLLM acts on far more than OpenAI's parameters: per-request credentials and endpoints
(`api_key`, `api_base`), provider HTTP headers (`headers`, `extra_headers`,
`provider_specific_header`), parameter dropping that lifts the output cap the hold was sized from
(`additional_drop_params`, `drop_params`), custom prices, fallbacks, mocks and callbacks. So the body
LiteLLM receives is built from the lists below, never from the client's body minus a denylist:

- `OPENAI_PARAMS`: each route's request parameters as OpenAI's API reference documents them
  (platform.openai.com/docs/api-reference: chat/create, completions/create, embeddings/create,
  images/create, responses/create), minus those the gateway cannot bound or price (`PRICED_EXTRAS`);
- the operator's `forward_params` from the policy file (provider parameters such as `top_k`), for
  every model ("*") or one LiteLLM model name.

A field LiteLLM would read as credentials, routing, logging or its own control (`SILENTLY_DROPPED`,
`DROPPED_PREFIXES`) is dropped without an error, as the contract says; any other field is 400
`invalid_value` naming it, so a caller learns at once that a parameter had no effect. Nested objects
the gateway itself reads (`stream_options`) are allowlisted too. No field ever becomes an HTTP header:
the gateway sends LiteLLM its own fixed headers only (proxy/gateway/headers.py).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from proxy.config.policy import PolicyConfig
from proxy.config.settings import ConfigError
from proxy.errors import ProxyError
from proxy.gateway.responses import check_responses

# https://platform.openai.com/docs/api-reference/chat/create (as of 2026): every documented body field.
# `metadata` is documented too, but LiteLLM reads it as its own logging/routing metadata: dropped.
CHAT = frozenset({
    "model", "messages", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "n", "parallel_tool_calls", "presence_penalty", "prompt_cache_key",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "modalities", "prompt_cache_retention",
})
# https://platform.openai.com/docs/api-reference/completions/create
COMPLETIONS = frozenset({
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
})
# https://platform.openai.com/docs/api-reference/embeddings/create
EMBEDDINGS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})
# https://platform.openai.com/docs/api-reference/images/create (`stream` is refused by request_body.py;
# `partial_images` only means something in a stream)
IMAGES = frozenset({
    "model", "prompt", "background", "moderation", "n", "output_compression", "output_format", "quality",
    "response_format", "size", "style", "user", "stream",
})
# https://platform.openai.com/docs/api-reference/responses/create, minus what the gateway cannot bound:
# `conversation` and `prompt` (server-side content of unknown size) are refused by name (PRICED_EXTRAS);
# `background: true` and built-in tools by value (proxy/gateway/responses.py).
RESPONSES = frozenset({
    "model", "input", "instructions", "max_output_tokens", "previous_response_id", "background", "include",
    "max_tool_calls", "parallel_tool_calls", "prompt_cache_key", "prompt_cache_retention", "reasoning",
    "safety_identifier", "service_tier", "store", "stream", "stream_options", "temperature", "text", "tool_choice",
    "tools", "top_logprobs", "top_p", "truncation", "user",
})
OPENAI_PARAMS: Mapping[str, frozenset[str]] = {
    "chat/completions": CHAT,
    "responses": RESPONSES,
    "completions": COMPLETIONS,
    "embeddings": EMBEDDINGS,
    "images/generations": IMAGES,
}
STREAM_OPTIONS = frozenset({"include_usage", "include_obfuscation"})

# Documented by OpenAI, billed beyond what the catalogue prices (tokens at input/output rates, images
# at a per-image rate): refused with the reason rather than admitted without a true upper bound.
PRICED_EXTRAS: Mapping[str, str] = {
    "audio": "audio output is not priced on this gateway",
    "web_search_options": "web search is not priced on this gateway",
    "prediction": "predicted outputs are billed beyond the output cap and are not priced on this gateway",
    "partial_images": "streamed partial images are not priced on this gateway",
    "conversation": "a stored conversation's size cannot be bounded before it is sent",
    "prompt": "a stored prompt template's size cannot be bounded before it is sent",
}
# PRICED_EXTRAS that are a route's own documented parameter elsewhere (`prompt` on /completions)
_EXTRAS_OF: Mapping[str, frozenset[str]] = {"conversation": frozenset({"responses"}),
                                             "prompt": frozenset({"responses"})}
# the values of these fields that change the price the catalogue holds and settles at
PRICED_VALUES: Mapping[str, frozenset[str]] = {
    "service_tier": frozenset({"auto", "default"}),
}
CHAT_TOOL_TYPES = frozenset({"function", "custom"})
# content parts of chat messages: text and images are bounded by the token counter (an image part counts as
# more than any model bills for one image, proxy/gateway/tokens.py); audio and files are billed by rules the
# catalogue does not know
CONTENT_PARTS = frozenset({"text", "image_url", "refusal"})
UNPRICED_PARTS = frozenset({"input_audio", "file", "audio"})
MODALITIES = frozenset({"text"})

# What LiteLLM 1.106.2 reads as credentials, endpoints, routing, pricing, logging, mocking or caching
# (litellm/main.py's completion() kwargs, litellm/types/utils.py all_litellm_params, the proxy's
# litellm_pre_call_utils.py and auth_utils._BANNED_REQUEST_BODY_PARAMS). Dropped without an error, as the
# contract says: the OpenAI SDKs' own `organization` handling and observability add-ons send some of them.
SILENTLY_DROPPED = frozenset({
    "api_key", "api_base", "base_url", "api_version", "user_config", "metadata", "extra_body",
    "extra_headers", "headers", "provider_specific_header", "mock_response", "mock_tool_calls",
    "mock_testing_fallbacks", "fallbacks", "context_window_fallback_dict", "input_cost_per_token",
    "output_cost_per_token", "input_cost_per_second", "output_cost_per_second", "organization", "power_level",
    "proxy_server_request", "secret_fields", "guardrails", "tags", "caching", "cache", "num_retries", "timeout",
    "azure_ad_token", "fallback_depth", "model_list", "deployment_id", "model_info", "custom_llm_provider",
    "region_name", "deployment_url", "use_ssl", "rust", "workspace_id", "tiered_pricing",
    "turn_off_message_logging", "output_vector_size", "callbacks", "success_callback", "failure_callback",
    "service_callback", "logger_fn", "weights", "enable_prompt_caching", "disable_global_guardrails",
    "disable_global_guardrail", "opted_out_global_guardrails", "standard_logging_object", "routing_decision",
    "max_retries", "request_timeout", "stream_timeout", "specific_deployment", "model_group", "priority",
    "vector_store_ids", "prompt_id", "prompt_variables", "prompt_version", "user_continue_message",
    "ensure_alternating_roles", "assistant_continue_message", "supports_system_message", "client",
    "aws_region_name", "max_budget", "budget_duration",
    "preset_cache_key", "no-log", "no_log", "hf_model_name", "template", "custom_prompt_dict",
    "initial_prompt_value", "roles", "final_prompt_value", "bos_token", "eos_token", "acompletion",
    "aembedding", "aimage_generation", "mock_timeout",
})
DROPPED_PREFIXES = (
    "litellm_", "aws_", "vertex_", "azure_", "cost_", "user_api_key", "langfuse_", "langsmith_", "arize_",
    "braintrust_", "dd_", "gcs_", "humanloop_", "lunary_", "newrelic_", "posthog_", "signoz_", "wandb_",
    "weave_", "slack_", "bedrock_", "sagemaker_", "s3_", "anthropic", "agentcore_", "nvcf_", "fireworks_",
    "regional_", "mock_", "_",
)
DROPPED_INFIXES = ("_cost_", "cost_per_")
MAX_FIELD_NAME = 64


def silently_dropped(name: str) -> bool:
    return name in SILENTLY_DROPPED or name.startswith(DROPPED_PREFIXES) or any(i in name for i in DROPPED_INFIXES)


def forwardable(route: str, body: Mapping[str, Any], extra: Collection[str]) -> dict[str, Any]:
    """The fields of `body` LiteLLM may receive: the route's OpenAI parameters plus `extra` (the
    policy file's `forward_params` for the model), without the silently dropped ones. Raises 400
    `invalid_value` naming the first other field, a priced extra, or a bad nested option."""
    allowed = OPENAI_PARAMS[route]
    kept: dict[str, Any] = {}
    for name, value in body.items():
        if silently_dropped(name):
            continue
        refused = name in PRICED_EXTRAS and route in _EXTRAS_OF.get(name, (route,))
        if refused and value is not None and name not in extra:
            raise ProxyError.invalid_value(name, f"'{name}' is refused: {PRICED_EXTRAS[name]}.")
        if name not in allowed and name not in extra:
            shown = name if len(name) <= MAX_FIELD_NAME else name[:MAX_FIELD_NAME] + "..."
            raise ProxyError.invalid_value(
                shown, f"Unrecognized request argument supplied: {shown}. This gateway forwards only the OpenAI "
                "parameters of this route and the provider parameters its operator allows.")
        kept[name] = value
    _check_values(route, kept, extra)
    return kept


def _check_values(route: str, body: dict[str, Any], extra: Collection[str]) -> None:
    for name, values in PRICED_VALUES.items():
        value = body.get(name)
        if value is not None and name not in extra and value not in values:
            raise ProxyError.invalid_value(name, f"'{name}' may only be one of {', '.join(sorted(values))} here.")
    options = body.get("stream_options")
    if isinstance(options, dict):
        for key in options:
            if key not in STREAM_OPTIONS:
                raise ProxyError.invalid_value(f"stream_options.{str(key)[:MAX_FIELD_NAME]}",
                                               "Unrecognized stream option.")
    if route == "responses":
        check_responses(body)
        return
    if route != "chat/completions":
        return
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or not set(modalities) <= MODALITIES):
        raise ProxyError.invalid_value("modalities", "Only text output is priced on this gateway.")
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in CONTENT_PARTS:
                why = "are not priced on this gateway" if kind in UNPRICED_PARTS else "are not supported"
                raise ProxyError.invalid_value(f"messages[{i}].content[{j}].type",
                                               f"Content parts of type {str(kind)[:32]!r} {why}.")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ProxyError.invalid_value("tools", "'tools' must be a list.")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") not in CHAT_TOOL_TYPES:
                raise ProxyError.invalid_value(f"tools[{index}].type",
                                               "Only function and custom tools are supported here.")


_GATEWAY_OWNED = frozenset({"model", "stream", "stream_options", "n", "best_of"})
# provider spellings of an output cap (max_new_tokens, num_predict, max_output_tokens, ...): the hold is
# sized from max_tokens / max_completion_tokens as the power level clamps them, so no other cap may pass
_OUTPUT_CAP = re.compile(r"max_?(new_|output_|completion_|gen_)?tokens|num_predict|max_length|min_tokens", re.I)


def check_forward_params(policy: PolicyConfig, *, source: str = "CREDITGATE_POLICY_CONFIG") -> None:
    """Start-up check of the policy file's `forward_params`: a name the gateway drops as credentials,
    routing or logging, one it owns, or a provider's own output cap would reopen the hole the allowlist
    closes. `ConfigError`, one line per mistake."""
    problems = [
        f"{source}: forward_params.{model}: {name!r} cannot be forwarded (the gateway owns it, it is an output "
        "cap the hold cannot see, or LiteLLM reads it as credentials, routing, pricing or logging)"
        for model, names in policy.forward_params.items() for name in sorted(names)
        if silently_dropped(name) or name in _GATEWAY_OWNED or _OUTPUT_CAP.search(name)
    ]
    if problems:
        raise ConfigError("\n".join(problems))
