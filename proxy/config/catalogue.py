"""Models, deployments and prices from the LiteLLM config (the charge formula is proxy/ledger/tariffs.py).

`load_catalogue(path)` reads `model_list`: per model name its deployments (`model_info.id`, the
provider = prefix of `litellm_params.model`, prices in USD from `litellm_params` else `model_info`,
`model_info.byok`, `max_output_tokens`, `mode`). A name is held at the highest price among its
deployments and settled at the price of the deployment that answered (an unknown one: the highest).

Prices are exact Decimals from their YAML text, never binary floats (CONTRACT.md, Money).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.config.policy import PolicyConfig, as_decimal, load_yaml, read_config, unknown_keys
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
_PRICE_FIELDS = ("input_cost_per_token", "output_cost_per_token", "output_cost_per_image")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token (input, output) and per image; None = not priced."""

    input: Decimal | None = None
    output: Decimal | None = None
    image: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    model_name: str
    provider: str
    price: Price
    byok: str  # "none" | "optional" | "required"
    max_output_tokens: int | None
    mode: str  # "chat" | "completion" | "embedding" | "image_generation" | ...


@dataclass(frozen=True, slots=True)
class Model:
    """One LiteLLM model name and the deployments that serve it."""

    name: str
    deployments: tuple[Deployment, ...]
    highest: Price = field(init=False)
    """Component-wise highest price: an upper bound whichever deployment answers."""

    def __post_init__(self) -> None:
        def top(values: list[Decimal | None]) -> Decimal | None:
            return None if any(v is None for v in values) else max(v for v in values if v is not None)

        ds = self.deployments
        highest = Price(
            top([d.price.input for d in ds]), top([d.price.output for d in ds]), top([d.price.image for d in ds])
        )
        object.__setattr__(self, "highest", highest)  # computed once: it is read on every request

    @property
    def mode(self) -> str:
        return self.deployments[0].mode

    @property
    def provider(self) -> str:
        return self.deployments[0].provider

    @property
    def single_provider(self) -> bool:
        return len({d.provider for d in self.deployments}) == 1

    @property
    def byok_allowed(self) -> bool:
        """Every deployment takes a member's key: otherwise LiteLLM could route the key elsewhere."""
        return self.single_provider and all(d.byok in ("optional", "required") for d in self.deployments)

    @property
    def byok_required(self) -> bool:
        return any(d.byok == "required" for d in self.deployments)

    @property
    def max_output_tokens(self) -> int | None:
        caps = [d.max_output_tokens for d in self.deployments if d.max_output_tokens is not None]
        return min(caps) if caps else None

    def price_for(self, deployment_id: str | None) -> Price:
        """The answering deployment's price; unknown or missing -> the highest."""
        for d in self.deployments:
            if d.id == deployment_id:
                return d.price
        return self.highest

    def deployment(self, deployment_id: str | None) -> Deployment | None:
        return next((d for d in self.deployments if d.id == deployment_id), None)

    def priced(self) -> bool:
        """True when a charge for this model's mode can be bounded from every deployment's price."""
        price = self.highest
        if self.mode == "embedding":
            return price.input is not None
        if self.mode == "image_generation":
            return price.image is not None
        return price.input is not None and price.output is not None


@dataclass(frozen=True, slots=True)
class Catalogue:
    models: Mapping[str, Model]

    def get(self, name: str) -> Model | None:
        return self.models.get(name)


def load_catalogue(path: Path) -> Catalogue:
    """Read the LiteLLM config's `model_list`; `ConfigError` names the file and each mistake."""
    return parse_catalogue(read_config(path, "CREDITGATE_LITELLM_CONFIG"), source=str(path))


def parse_catalogue(text: str, *, source: str = "LiteLLM config") -> Catalogue:
    raw = load_yaml(text, source)
    problems: list[str] = []
    if isinstance(raw, Mapping):
        unknown_keys(raw, LITELLM_SECTIONS, "", problems)
    entries = raw.get("model_list") if isinstance(raw, Mapping) else None
    if not isinstance(entries, list) or not entries:
        problems.append("model_list must be a non-empty list")
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    grouped: dict[str, list[Deployment]] = {}
    for index, entry in enumerate(entries):
        deployment = _deployment(entry, f"model_list[{index}]", problems)
        if deployment is not None:
            grouped.setdefault(deployment.model_name, []).append(deployment)
    ids = [d.id for ds in grouped.values() for d in ds]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"model_info.id {dup!r} is used by more than one deployment")
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return Catalogue({name: Model(name, tuple(ds)) for name, ds in grouped.items()})


def _deployment(entry: Any, where: str, problems: list[str]) -> Deployment | None:
    if not isinstance(entry, Mapping):
        problems.append(f"{where} must be a mapping")
        return None
    unknown_keys(entry, _ENTRY, f"{where}: ", problems)
    name = entry.get("model_name")
    params = entry.get("litellm_params") or {}
    info = entry.get("model_info") or {}
    if not isinstance(name, str) or not name or not isinstance(params, Mapping) or not isinstance(info, Mapping):
        problems.append(f"{where} needs model_name, litellm_params and (optional) model_info mappings")
        return None
    target = params.get("model")
    if not isinstance(target, str) or not target:
        problems.append(f"{where} ({name}): litellm_params.model is required")
        return None
    prices: dict[str, Decimal | None] = {}
    for key in _PRICE_FIELDS:
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
    return Deployment(
        id=str(info.get("id") or f"{name}#{where}"),
        model_name=name,
        provider=_provider(params, target),
        price=Price(prices["input_cost_per_token"], prices["output_cost_per_token"], prices["output_cost_per_image"]),
        byok=byok,
        max_output_tokens=cap,
        mode=str(info.get("mode", "chat")),
    )


def _provider(params: Mapping[str, Any], target: str) -> str:
    """`custom_llm_provider` when given, else the prefix of `litellm_params.model` (LiteLLM's own
    rule); a bare model name is an OpenAI one."""
    explicit = params.get("custom_llm_provider")
    if isinstance(explicit, str) and explicit:
        return explicit
    return target.split("/", 1)[0] if "/" in target else "openai"


def check_policy(policy: PolicyConfig, catalogue: Catalogue, *, source: str = "CREDITGATE_POLICY_CONFIG") -> None:
    """Start-up check: every model the policy file names is in the LiteLLM config (a typo would
    otherwise only show as 404s). `ConfigError`, one line per mistake."""
    problems = [
        f"{source}: model {name!r} is not in the LiteLLM config's model_list"
        for name in sorted(policy.models())
        if catalogue.get(name) is None
    ]
    if problems:
        raise ConfigError("\n".join(problems))
