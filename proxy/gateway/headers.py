"""What crosses the gateway in headers, in both directions, and the request id.

To LiteLLM: only the gateway's own `Authorization`, `content-type` and `accept`; nothing of the
client's. To the client: an allowlist of LiteLLM's response headers (content type, OpenAI rate-limit
and processing headers, `retry-after`) plus the gateway's own. `x-litellm-*`, `llm_provider-*`,
`server`, `date` and anything naming an upstream address never pass (CONTRACT.md, Client API).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Response headers of LiteLLM a client may see; everything else is dropped.
_ALLOWED = frozenset({b"content-type", b"openai-processing-ms", b"openai-version", b"retry-after"})
_ALLOWED_PREFIX = b"x-ratelimit-"

RawHeaders = list[tuple[bytes, bytes]]


def client_response_headers(upstream: Iterable[tuple[bytes, bytes]], own: Iterable[str] = ()) -> RawHeaders:
    """LiteLLM's raw response headers filtered down to the allowlist (names lower-cased), less the names
    in `own`, which the gateway sets itself: its x-ratelimit-* describe the caller's own limits, not the
    provider's limits on the platform's key, and a header sent twice would read as "59, 4999"."""
    mine = {name.lower().encode("latin-1") for name in own}
    kept: RawHeaders = []
    for name, value in upstream:
        lower = name.lower()
        if (lower in _ALLOWED or lower.startswith(_ALLOWED_PREFIX)) and lower not in mine:
            kept.append((lower, value))
    return kept


def gateway_headers(request_id_value: str, extra: Mapping[str, str]) -> RawHeaders:
    """The gateway's own headers: `x-request-id` and whatever the chain put in ctx.response_headers."""
    out: RawHeaders = [(b"x-request-id", request_id_value.encode("ascii"))]
    for name, value in extra.items():
        out.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return out


def upstream_request_headers(upstream_key: str) -> dict[str, str]:
    """Headers sent to LiteLLM with every request: its key, content type and accept; nothing else."""
    return {
        "Authorization": f"Bearer {upstream_key}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }


def bearer_token(raw: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not raw:
        return None
    scheme, _, token = raw.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
