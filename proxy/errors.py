"""One error type for the whole gateway, rendered as OpenAI error JSON in one place.

Every failure a client can see is a `ProxyError`; `to_bytes()` is its one body, `to_response()` renders
it for the Starlette routes (the app's exception handler), and the billed passthrough sends the same
bytes and headers as raw ASGI (proxy/gateway/passthrough.py), or as a stream's last event. The
statuses, types and codes are the contract's table (`shared/CONTRACT.md`, Errors).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class ProxyError(Exception):
    """An error the client sees: status, OpenAI `type`, `code`, optional `param` and extra headers."""

    def __init__(
        self,
        status: int,
        type_: str,
        code: str | None,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def to_response(self) -> Response:
        return Response(self.to_bytes(), status_code=self.status, headers=self.headers, media_type="application/json")

    def __repr__(self) -> str:
        return f"ProxyError({self.status}, {self.code!r}, {self.message!r})"

    # 400
    @classmethod
    def invalid_json(cls, message: str = "The request body is not valid JSON.") -> ProxyError:
        return cls(400, "invalid_request_error", "invalid_json", message)

    @classmethod
    def missing_field(cls, field: str) -> ProxyError:
        return cls(400, "invalid_request_error", "missing_field", f"Missing required field: '{field}'.", param=field)

    @classmethod
    def invalid_value(cls, param: str | None, message: str) -> ProxyError:
        return cls(400, "invalid_request_error", "invalid_value", message, param=param)

    @classmethod
    def body_too_large(cls, limit: int) -> ProxyError:
        return cls(413, "invalid_request_error", "body_too_large", f"The request body exceeds {limit} bytes.")

    # 401
    @classmethod
    def invalid_api_key(cls, message: str = "Invalid API key.") -> ProxyError:
        return cls(401, "authentication_error", "invalid_api_key", message)

    @classmethod
    def revoked_api_key(cls) -> ProxyError:
        return cls(401, "authentication_error", "revoked_api_key", "This API key has been revoked.")

    @classmethod
    def byok_key_rejected(cls, provider: str) -> ProxyError:
        return cls(
            401,
            "authentication_error",
            "byok_key_rejected",
            f"The provider '{provider}' rejected your own API key (BYOK). Check or replace the key.",
        )

    # 402
    @classmethod
    def insufficient_credits(cls, code: str, message: str) -> ProxyError:
        return cls(402, "insufficient_credits", code, message)

    # 403
    @classmethod
    def permission(cls, code: str, message: str) -> ProxyError:
        return cls(403, "permission_error", code, message)

    # 404
    @classmethod
    def not_found(cls, code: str, message: str) -> ProxyError:
        return cls(404, "not_found_error", code, message)

    @classmethod
    def route_not_found(cls) -> ProxyError:
        return cls.not_found("route_not_found", "Unknown route.")

    # 405 is rendered as a route error too: nothing passes through unbilled
    @classmethod
    def method_not_allowed(cls, allowed: str) -> ProxyError:
        return cls(
            405, "invalid_request_error", "method_not_allowed", "Method not allowed.", headers={"allow": allowed}
        )

    # 409
    @classmethod
    def request_id_in_use(cls, request_id: str) -> ProxyError:
        return cls(
            409,
            "conflict_error",
            "request_id_in_use",
            f"Request id '{request_id}' is already in flight or settled; use a new X-Request-Id.",
            headers={"x-should-retry": "false"},
        )

    # 410
    @classmethod
    def purchases_disabled(cls) -> ProxyError:
        return cls(
            410,
            "gone",
            "purchases_disabled",
            "Individual credit purchases are disabled; contact your organization admin to allocate credits.",
        )

    # 429
    @classmethod
    def rate_limited(cls, retry_after: int, message: str = "Rate limit exceeded.", *,
                     retry_after_ms: int | None = None) -> ProxyError:
        """`retry_after` whole seconds (the header allows nothing finer); `retry_after_ms`, when known, is
        the precise wait, which the OpenAI SDKs prefer to `Retry-After`."""
        headers = {"retry-after": str(retry_after)}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        return cls(429, "rate_limit_error", "rate_limited", message, headers=headers)

    # 5xx
    @classmethod
    def upstream_unreachable(cls) -> ProxyError:
        return cls(502, "upstream_error", "upstream_unreachable", "The model service is unreachable.")

    @classmethod
    def upstream_failed(cls, message: str = "The model service failed to answer.") -> ProxyError:
        return cls(502, "upstream_error", "upstream_failed", message)

    @classmethod
    def upstream_timeout(cls) -> ProxyError:
        return cls(504, "upstream_error", "upstream_timeout", "The model service did not answer in time.")

    @classmethod
    def ledger_unavailable(cls) -> ProxyError:
        return cls(503, "service_unavailable", "ledger_unavailable", "The credit ledger is unavailable; retry later.")
