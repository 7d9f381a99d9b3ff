"""A scoped key's routes, read-only flag and models (proxy/directory/scopes.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.config.policy import Tier
from proxy.directory.scopes import (
    canonical_path,
    check_model,
    check_route,
    narrow,
    parse_models,
    parse_routes,
)
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError


def key(*, routes: tuple[str, ...] | None = None, models: tuple[str, ...] | None = None,
        read_only: bool = False) -> ApiKey:
    return ApiKey("key_1", "usr_1", "org_1", False, models, routes, read_only)


def refusal(call: object) -> tuple[int, str, str]:
    assert callable(call)
    with pytest.raises(ProxyError) as exc:
        call()
    return exc.value.status, exc.value.code or "", exc.value.message


def test_an_unscoped_key_and_no_key_reach_everything() -> None:
    for k in (None, key()):
        check_route(k, "POST", "/v1/chat/completions")
        check_route(k, "DELETE", "/admin/keys/key_2")
        check_model(k, "anything")


def test_routes_are_prefixes_on_segment_boundaries_under_both_client_prefixes() -> None:
    k = key(routes=("/v1/chat/completions", "/v1/requests"))
    check_route(k, "POST", "/v1/chat/completions")
    check_route(k, "POST", "/api/v1/llm/chat/completions")
    check_route(k, "GET", "/v1/requests/req_1")
    assert refusal(lambda: check_route(k, "POST", "/v1/chat/completionsX")) == (
        403, "route_not_allowed", "This API key may not call /v1/chat/completionsX.")
    assert refusal(lambda: check_route(k, "GET", "/api/v1/llm/credits"))[:2] == (403, "route_not_allowed")
    assert refusal(lambda: check_route(k, "GET", "/admin/orgs/org_1"))[:2] == (403, "route_not_allowed")


def test_a_read_only_key_may_only_read() -> None:
    k = key(read_only=True)
    check_route(k, "GET", "/v1/credits")
    check_route(k, "head", "/v1/credits")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert refusal(lambda m=method: check_route(k, m, "/v1/byok/keys")) == (  # type: ignore[misc]
            403, "read_only_key", "This API key is read-only: it may only read (GET).")


def test_models_are_checked_by_name_and_narrow_the_tier() -> None:
    k = key(models=("fake-small", "fake-large"))
    check_model(k, "fake-small")
    assert refusal(lambda: check_model(k, "fake-medium")) == (
        403, "model_not_allowed", "This API key may not use the model 'fake-medium'.")
    tier = Tier("starter", Decimal("0.1"), ("fake-small", "fake-medium"))
    assert narrow(tier, k).models == ("fake-small",)
    assert narrow(tier, k).markup == Decimal("0.1")
    assert narrow(Tier("all", Decimal(0), ("*",)), k).models == ("fake-small", "fake-large")
    assert narrow(tier, key()) is tier


def test_routes_and_models_are_parsed_strictly() -> None:
    assert parse_routes(None) is None
    assert parse_routes(["/api/v1/llm/chat/completions/", "/v1/chat/completions", "/admin"]) == (
        "/v1/chat/completions", "/admin")
    assert canonical_path("/api/v1/llm") == "/v1"
    for bad in (["v1/chat"], ["/v1//chat"], ["/v1/../admin"], ["/v1/chat?x=1"], ["/"], [""], ["/" + "a" * 128],
                ["/v1/%2e%2e"], [f"/r{i}" for i in range(33)]):
        assert refusal(lambda b=bad: parse_routes(b))[:2] == (400, "invalid_value"), bad  # type: ignore[misc]
    assert parse_models(["fake-small", "openai/gpt-4o", "fake-small"]) == ("fake-small", "openai/gpt-4o")
    for bad in ([" fake"], ["a\x00"], ["x" * 129], [""]):
        assert refusal(lambda b=bad: parse_models(b))[:2] == (400, "invalid_value"), bad  # type: ignore[misc]
