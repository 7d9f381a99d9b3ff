"""The one error type: every code of the contract's error table with its status and type, rendered as
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import ProxyError

CONTRACT = [  # CONTRACT.md, Errors
    (ProxyError.invalid_json(), 400, "invalid_request_error", "invalid_json"),
    (ProxyError.missing_field("model"), 400, "invalid_request_error", "missing_field"),
    (ProxyError.invalid_value("n", "bad"), 400, "invalid_request_error", "invalid_value"),
    (ProxyError.invalid_api_key(), 401, "authentication_error", "invalid_api_key"),
    (ProxyError.revoked_api_key(), 401, "authentication_error", "revoked_api_key"),
    (ProxyError.byok_key_rejected("openai"), 401, "authentication_error", "byok_key_rejected"),
    (ProxyError.insufficient_credits("org_pool_exhausted", "m"), 402, "insufficient_credits", "org_pool_exhausted"),
    (ProxyError.permission("not_a_member", "m"), 403, "permission_error", "not_a_member"),
    (ProxyError.not_found("model_not_found", "m"), 404, "not_found_error", "model_not_found"),
    (ProxyError.route_not_found(), 404, "not_found_error", "route_not_found"),
    (ProxyError.request_id_in_use("r1"), 409, "conflict_error", "request_id_in_use"),
    (ProxyError.purchases_disabled(), 410, "gone", "purchases_disabled"),
    (ProxyError.body_too_large(10), 413, "invalid_request_error", "body_too_large"),
    (ProxyError.rate_limited(7), 429, "rate_limit_error", "rate_limited"),
    (ProxyError.upstream_unreachable(), 502, "upstream_error", "upstream_unreachable"),
    (ProxyError.upstream_failed(), 502, "upstream_error", "upstream_failed"),
    (ProxyError.ledger_unavailable(), 503, "service_unavailable", "ledger_unavailable"),
    (ProxyError.upstream_timeout(), 504, "upstream_error", "upstream_timeout"),
]


@pytest.mark.parametrize(("err", "status", "type_", "code"), CONTRACT, ids=[c[3] for c in CONTRACT])
def test_every_contract_error_has_its_status_type_and_shape(err: ProxyError, status: int, type_: str,
                                                            code: str) -> None:
    body = orjson.loads(err.to_bytes())
    assert (err.status, body["error"]["type"], body["error"]["code"]) == (status, type_, code)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_headers_travel_with_the_error() -> None:
    assert ProxyError.rate_limited(7).headers == {"retry-after": "7"}
    assert ProxyError.request_id_in_use("r1").headers == {"x-should-retry": "false"}
    assert ProxyError.invalid_value("n", "bad").param == "n"
