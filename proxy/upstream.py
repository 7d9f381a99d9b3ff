"""The hop to LiteLLM: one shared aiohttp session, the body LiteLLM receives, and error mapping.

aiohttp, not httpx: shared/research/perf-ceiling.md measured httpx 0.28 at ~1,800 µs CPU per
request against 91 µs for bare ASGI + aiohttp, and httpx collapsing to 83 of ~635 rps under 64
slow streams (encode/httpx#3215). The session never decompresses (`auto_decompress=False`) and asks
for identity encoding, so bytes pass through untouched; it ignores proxy variables (`trust_env`).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from proxy.context import RequestContext
from proxy.headers import upstream_request_headers
from proxy.settings import Settings
from proxy.upstream_errors import from_client_error

# Client-chosen credentials, routing, pricing, logging and LiteLLM controls: never forwarded (litellm.md
# §0.3, §2 "What LiteLLM forwards upstream", §3). A client must not swap in a provider key or endpoint,
# set its own price, pick fallbacks, mock the answer, point LiteLLM's loggers at its own host, or reach
# LiteLLM features we do not bill. The prefixes/infixes cover LiteLLM 1.106.2's banned body params
# (auth_utils._BANNED_REQUEST_BODY_PARAMS: observability hosts and keys, custom pricing, cloud
# identities), which LiteLLM would otherwise answer with a 401 the client could not act on.
DROPPED_FIELDS = frozenset({
    "api_key", "api_base", "base_url", "api_version", "user_config", "metadata", "extra_body",
    "extra_headers", "mock_response", "mock_tool_calls", "mock_testing_fallbacks", "fallbacks",
    "context_window_fallback_dict", "input_cost_per_token", "output_cost_per_token", "organization",
    "power_level", "proxy_server_request", "secret_fields", "guardrails", "tags", "caching", "cache",
    "num_retries", "timeout", "azure_ad_token", "fallback_depth", "model_list", "deployment_id",
    "model_info", "custom_llm_provider", "region_name", "deployment_url", "use_ssl", "rust", "workspace_id",
    "tiered_pricing", "turn_off_message_logging", "output_vector_size", "callbacks", "success_callback",
    "failure_callback", "service_callback", "logger_fn", "weights", "enable_prompt_caching",
    "disable_global_guardrails", "disable_global_guardrail", "opted_out_global_guardrails",
    "standard_logging_object", "routing_decision", "max_retries", "request_timeout", "stream_timeout",
})
DROPPED_PREFIXES = (
    "litellm_", "aws_", "vertex_", "azure_", "cost_", "user_api_key", "langfuse_", "langsmith_", "arize_",
    "braintrust_", "dd_", "gcs_", "humanloop_", "lunary_", "newrelic_", "posthog_", "signoz_", "wandb_",
    "weave_", "slack_", "bedrock_", "sagemaker_", "s3_", "anthropic", "agentcore_", "nvcf_", "fireworks_",
    "regional_", "_",
)
DROPPED_INFIXES = ("_cost_", "cost_per_")


def upstream_body(ctx: RequestContext) -> bytes:
    """The JSON LiteLLM receives: the client's body minus DROPPED_FIELDS, with the chain's model,
    the member's own key at the top level (litellm.md §3) and, for streams, include_usage forced on."""
    body: dict[str, Any] = {
        k: v for k, v in ctx.body.items()
        if k not in DROPPED_FIELDS and not k.startswith(DROPPED_PREFIXES) and not any(i in k for i in DROPPED_INFIXES)
    }
    if ctx.model:
        body["model"] = ctx.model
    if ctx.byok_key is not None:
        body["api_key"] = ctx.byok_key.reveal()
    if ctx.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(body)


class Upstream:
    """LiteLLM over one keep-alive aiohttp session, opened and closed by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.upstream_url.rstrip("/")
        self._headers = {**upstream_request_headers(settings.upstream_key.reveal()), "Accept-Encoding": "identity"}
        # sock_read bounds the wait for each read (headers, then every chunk), not a stream's length
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.upstream_connect_timeout_seconds,
            sock_connect=settings.upstream_connect_timeout_seconds,
            sock_read=settings.upstream_timeout_seconds,
        )
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # LiteLLM's uvicorn drops idle connections after 5 s (timeout_keep_alive): retire ours first, so
        # a POST never goes out on a connection the server is closing (POSTs are not retried).
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False, trust_env=False,
            skip_auto_headers=("User-Agent",), raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.open() has not run (the app's lifespan opens it)")
        return self._session

    async def post(self, path: str, payload: bytes) -> aiohttp.ClientResponse:
        """POST `payload` to LiteLLM; the caller owns the response (release or close it).
        Raises ProxyError (upstream_unreachable / upstream_timeout / upstream_failed)."""
        try:
            return await self.session.post(self.base_url + path, data=payload, headers=self._headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise from_client_error(exc) from exc

    async def get(self, path: str, timeout: float | None = None) -> tuple[int, dict[str, str], bytes]:
        """GET a small LiteLLM resource whole: (status, headers, body). Raises ProxyError."""
        limit = aiohttp.ClientTimeout(total=timeout) if timeout else None
        try:
            async with self.session.get(self.base_url + path, headers=self._headers, timeout=limit) as resp:
                return resp.status, dict(resp.headers), await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise from_client_error(exc) from exc
