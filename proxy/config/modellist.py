"""The LiteLLM config's `model_list`, as the operator wrote it (CREDITGATE_LITELLM_CONFIG).

`parse_entries(text)` returns one `Entry` per deployment: its model name (maybe a wildcard, `anthropic/*`),
the provider (`custom_llm_provider`, else the prefix of `litellm_params.model`: LiteLLM's own rule), the
prices in USD from `litellm_params` else `model_info` (None where the config says nothing: LiteLLM's model
info may know them, proxy/config/catalogue.py), `model_info.byok`, `max_output_tokens`, `mode` and `id`.
Mistakes are one `ConfigError` line each, naming the file and the entry; a misspelt section or key names
the nearest valid one. Prices are exact Decimals from their YAML text, never binary floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.config.modelinfo import PRICE_FIELDS, is_wildcard
from proxy.config.policy import as_decimal, load_yaml, unknown_keys
from proxy.config.settings import ConfigError

BYOK_MODES = ("none", "optional", "required")
# the top-level sections of a LiteLLM 1.106.2 proxy config (litellm/proxy/proxy_server.py reads these): an
# operator's own config works as it is, while a misspelt `model_lst` is an error, not an empty catalogue
LITELLM_SECTIONS = ("model_list", "litellm_settings", "general_settings", "router_settings", "environment_variables",
                    "callback_settings", "guardrails", "mcp_servers", "mcp_tools", "include", "credential_list",
                    "vector_store_registry", "files_settings", "finetune_settings", "assistant_settings",
                    "search_tools", "prompts", "policies", "policy_attachments", "agent_list", "agents",
                    "pass_through_endpoints", "classifier_plugin", "plugins", "sandbox_tools", "worker_registry")
_ENTRY = ("model_name", "litellm_params", "model_info")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token (input, output) and per image; None = not priced."""

    input: Decimal | None = None
    output: Decimal | None = None
    image: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One deployment as the LiteLLM config writes it (`model_list[index]`)."""

    index: int
    model_name: str
    target: str  # litellm_params.model
    provider: str
    id: str | None  # model_info.id
    price: Price  # the config's own prices
    byok: str  # "none" | "optional" | "required"
    max_output_tokens: int | None
    mode: str | None

    @property
    def wildcard(self) -> bool:
        return is_wildcard(self.model_name)



def parse_entries(text: str, *, source: str = "LiteLLM config") -> tuple[Entry, ...]:
    """The config's deployments as written; `ConfigError` with one line per mistake."""
    raw = load_yaml(text, source)
    problems: list[str] = []
    if isinstance(raw, Mapping):
        unknown_keys(raw, LITELLM_SECTIONS, "", problems)
    items = raw.get("model_list") if isinstance(raw, Mapping) else None
    if not isinstance(items, list) or not items:
        problems.append("model_list must be a non-empty list")
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    entries = [e for e in (_entry(item, index, problems) for index, item in enumerate(items)) if e is not None]
    ids = [e.id for e in entries if e.id is not None]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"model_info.id {dup!r} is used by more than one deployment")
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return tuple(entries)



def _entry(item: Any, index: int, problems: list[str]) -> Entry | None:
    where = f"model_list[{index}]"
    if not isinstance(item, Mapping):
        problems.append(f"{where} must be a mapping")
        return None
    unknown_keys(item, _ENTRY, f"{where}: ", problems)
    name = item.get("model_name")
    params = item.get("litellm_params") or {}
    info = item.get("model_info") or {}
    if not isinstance(name, str) or not name or not isinstance(params, Mapping) or not isinstance(info, Mapping):
        problems.append(f"{where} needs model_name, litellm_params and (optional) model_info mappings")
        return None
    target = params.get("model")
    if not isinstance(target, str) or not target:
        problems.append(f"{where} ({name}): litellm_params.model is required")
        return None
    prices: dict[str, Decimal | None] = {}
    for key in PRICE_FIELDS:
        raw = params.get(key, info.get(key))
        value = None if raw is None else as_decimal(raw)
        if raw is not None and (value is None or value < 0):
            problems.append(f"{where} ({name}): {key} must be a non-negative number, got {raw!r}")
        prices[key] = value
    byok = str(info.get("byok", "none"))
    if byok not in BYOK_MODES:
        problems.append(f"{where} ({name}): model_info.byok must be one of {', '.join(BYOK_MODES)}, got {byok!r}")
    cap = info.get("max_output_tokens", params.get("max_output_tokens"))
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        problems.append(f"{where} ({name}): max_output_tokens must be a positive integer, got {cap!r}")
        cap = None
    mode = info.get("mode")
    return Entry(
        index=index, model_name=name, target=target, provider=_provider(params, target),
        id=str(info["id"]) if info.get("id") else None,
        price=Price(prices["input_cost_per_token"], prices["output_cost_per_token"], prices["output_cost_per_image"]),
        byok=byok, max_output_tokens=cap, mode=str(mode) if mode else None,
    )


def _provider(params: Mapping[str, Any], target: str) -> str:
    """`custom_llm_provider` when given, else the prefix of `litellm_params.model` (LiteLLM's own
    rule); a bare model name is an OpenAI one."""
    explicit = params.get("custom_llm_provider")
    if isinstance(explicit, str) and explicit:
        return explicit
    return target.split("/", 1)[0] if "/" in target else "openai"
