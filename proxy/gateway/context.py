"""The per-request context every policy reads and changes, and the policy signature.

`proxy/` never imports `policies/`; the chain is a tuple of `Policy` callables handed to the
passthrough by `create_app()`. Work that must happen after the response (settle or void) goes on
`ctx.cleanup`, an `AsyncExitStack` the passthrough enters around the whole request, so it runs
exactly once on every path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from proxy.config.live import Snapshot
from proxy.config.settings import Secret
from proxy.directory.types import ApiKey, Membership
from proxy.ledger.types import Hold, Settlement
from proxy.ops.tracing import Trace

Policy = Callable[["RequestContext"], Awaitable[None]]

@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


class OutputMeter:
    """Counts what a stream has delivered so a stream cut short still has an estimate.

    Text is buffered and tokenized lazily (`tokens()`), so the per-chunk cost is an append.
    """

    __slots__ = ("_encode", "_pending", "_tokens", "chunks")

    def __init__(self, encode: Callable[[str], int] | None = None) -> None:
        self._encode = encode
        self._pending: list[str] = []
        self._tokens = 0
        self.chunks = 0

    def feed(self, text: str) -> None:
        self.chunks += 1
        if text:
            self._pending.append(text)

    def tokens(self) -> int:
        """Tokens observed so far; tokenizes only what arrived since the last call."""
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._tokens += self._encode(text) if self._encode else max(1, len(text) // 4)
        # a provider sends roughly one token per content chunk: never report fewer tokens than chunks
        return max(self._tokens, self.chunks)


@dataclass(slots=True)
class RequestContext:
    """Everything known about one client request. Policies fill it in; the passthrough reads it."""

    request_id: str
    route: str  # "chat/completions" | "completions" | "embeddings" | "images/generations" | "responses"
    headers: dict[str, str]  # client request headers, lower-cased names
    body: dict[str, Any]
    api_key: Secret | None = None
    # filled by the chain
    config: Snapshot | None = None  # the configuration the request runs, is held and settles under (PinConfig)
    key: ApiKey | None = None
    membership: Membership | None = None
    power_level: str | None = None  # the level that serves it (after a downgrade, the lower one)
    asked_model: str | None = None  # the client's `model` ("auto" or a name), for a downgrade's choice
    downgrade: bool = False  # a hold that does not fit may be retried at lower levels (X-Power-Fallback)
    multiplier: Decimal = Decimal(1)
    model: str | None = None  # model name sent to LiteLLM
    forward_params: frozenset[str] = frozenset()  # provider parameters forwarded beyond OpenAI's (policy file)
    provider: str | None = None
    byok: bool = False
    byok_key: Secret | None = field(default=None, repr=False)
    prompt_tokens: int = 0  # counted before forwarding (upper bound for the hold)
    # the most completion tokens the hold was sized for (the output cap times n), set by ReserveCredits: a
    # provider cannot stream more, so an estimate counted offline never exceeds it (policies/settlement.py)
    output_bound: int | None = None
    # recorded on the hold and its usage record (proxy/gateway/attribution.py), parsed with the body
    end_user: str | None = None  # the body's OpenAI `user`: the platform's own customer
    tags: tuple[str, ...] = ()  # X-Tags
    # what policies/ratelimit.py did before the body: "counted" (in its rpm buckets: refunded if tpm then
    # refuses the request) or "unchecked" (Redis did not answer: tpm is not asked either); "" = nothing
    ratelimit: str = ""
    hold: Hold | None = None
    # filled by the passthrough
    stream: bool = False
    client_wants_usage: bool = False
    upstream_status: int | None = None
    deployment_id: str | None = None  # x-litellm-model-id of the deployment that answered
    response_started: bool = False
    usage: Usage | None = None
    image_count: int | None = None
    response_id: str | None = None  # /responses: the id of the response served (proxy/gateway/responses.py)
    # /responses with previous_response_id: the least prompt bound, the model's context window (RewriteModel)
    prompt_floor: int = 0
    meter: OutputMeter = field(default_factory=OutputMeter)
    failure: str | None = None  # why the request did not complete: a ProxyError code or "client_disconnected"
    response_headers: dict[str, str] = field(default_factory=dict)  # gateway headers added to the answer
    cleanup: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)
    trace: Trace | None = field(default=None, repr=False)  # the request's trace (proxy/ops/tracing.py)
    # filled by the settlement (policies/settlement.py), for the access line: "posted", "voided", "failed", ...
    outcome: str | None = None
    settlement: Settlement | None = None

    def require_key(self) -> ApiKey:
        if self.key is None:
            raise RuntimeError("Authenticate must run before this policy")
        return self.key

    def require_membership(self) -> Membership:
        if self.membership is None:
            raise RuntimeError("ResolveOrg must run before this policy")
        return self.membership
