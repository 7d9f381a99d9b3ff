"""The BYOK key test: one token through LiteLLM with the member's key as the body's `api_key`.

It goes straight to LiteLLM, outside the policy chain: no hold, nothing billed. The answer never
echoes the key or LiteLLM's own wording (which names deployments and internals); it says only
what happened to the key. Classification follows the captures in research/litellm-captures/:
a provider that refuses the key comes back as 401 `authentication_error` (16), while LiteLLM
refusing the gateway's own key is 401 `auth_error` (11/12): a platform problem, reported as 502.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import orjson

from proxy.config.settings import Secret

ACCEPTED = "The provider accepted the key."
REJECTED = "The provider rejected the key."
RATE_LIMITED = "The provider is rate limiting this key; the key itself may be fine. Try again later."
PLATFORM = "The key could not be tested: the model service failed to answer."
UNREACHABLE = "The key could not be tested: the model service is unreachable."
TIMEOUT = "The key could not be tested: the model service did not answer in time."


def litellm_probe(
    session: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
    upstream_url: str,
    upstream_key: Secret,
    *,
    timeout: float = 30.0,
) -> Callable[[str, Secret], Awaitable[tuple[int, str]]]:
    """A `Probe` (proxy/caller/byok.py) posting to `{upstream_url}/v1/chat/completions` on `session`,
    or on `session()` at call time (e.g. `lambda: upstream.session`, opened by the app's lifespan)."""
    url = upstream_url.rstrip("/") + "/v1/chat/completions"
    current = session if callable(session) else (lambda: session)

    async def probe(model: str, key: Secret) -> tuple[int, str]:
        messages = [{"role": "user", "content": "ping"}]
        body = {"model": model, "messages": messages, "max_tokens": 1, "api_key": key.reveal()}
        headers = {"Authorization": f"Bearer {upstream_key.reveal()}", "Content-Type": "application/json"}
        try:
            async with current().post(
                url, data=orjson.dumps(body), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                raw = await resp.read()
                return classify(resp.status, raw)
        except TimeoutError:
            return 504, TIMEOUT
        except aiohttp.ClientConnectionError:
            return 502, UNREACHABLE
        except aiohttp.ClientError:
            return 502, PLATFORM

    return probe


def classify(status: int, raw: bytes) -> tuple[int, str]:
    """(status, message) for the caller from LiteLLM's answer to the test call."""
    if 200 <= status < 300:
        return status, ACCEPTED
    if status == 429:
        return 429, RATE_LIMITED
    if status in (401, 403) and error_type(raw) == "authentication_error":
        return status, REJECTED
    return 502, PLATFORM


def error_type(raw: bytes) -> str | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None
