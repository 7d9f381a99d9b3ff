"""Hypothesis bodies that mix OpenAI's parameters, LiteLLM's own request parameters and junk, sent through
the real gateway and the real LiteLLM 1.106.2 to the fake provider. Whatever the body: the answer is
never a 5xx; a refused request reaches nobody and holds nothing; an admitted one reaches the provider
with allowlisted fields only, the platform's key and headers only, an output cap no higher than the
one its hold was sized from, and settles at most its hold."""

from __future__ import annotations

import re
import secrets
import string
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devstack import services
from devstack.fake_provider import CONTROLS
from proxy.gateway.params import CHAT
from tests.e2e.conftest import Gateway, Member, make_member
from tests.e2e.test_billing import settled
from tests.e2e.test_trust_boundary import PROVIDER_KEY, provider_saw

CAP = 4_000  # balanced caps output at 4,000 tokens; fake-medium's own limit is 8,192
# LiteLLM 1.106.2's per-request parameters (litellm/main.py completion() and its kwargs, all_litellm_params in
# litellm/types/utils.py, the proxy's litellm_pre_call_utils.py): credentials, endpoints, headers, caps,
# prices, routing, callbacks, mocks, caching
LITELLM_PARAMS = [
    "api_key", "api_base", "base_url", "api_version", "headers", "extra_headers", "provider_specific_header",
    "additional_drop_params", "drop_params", "allowed_openai_params", "mock_response", "mock_tool_calls",
    "mock_testing_fallbacks", "mock_timeout", "fallbacks", "context_window_fallback_dict", "num_retries",
    "max_retries", "timeout", "request_timeout", "stream_timeout", "input_cost_per_token", "output_cost_per_token",
    "input_cost_per_second", "custom_llm_provider", "model_list", "deployment_id", "specific_deployment",
    "metadata", "litellm_metadata", "tags", "user_config", "caching", "cache", "guardrails", "callbacks",
    "success_callback", "failure_callback", "logger_fn", "litellm_logging_obj", "litellm_call_id",
    "langfuse_host", "langfuse_public_key", "aws_access_key_id", "aws_region_name", "vertex_project",
    "vertex_credentials", "azure_ad_token", "organization", "extra_body", "max_budget", "budget_duration",
    "prompt_id", "prompt_variables", "model_info", "proxy_server_request", "secret_fields", "region_name",
    "cost_per_token", "tiered_pricing", "top_k", "thinking", "max_new_tokens", "num_predict",
    "max_output_tokens", "reasoning", "web_search_options", "audio", "prediction", "service_tier",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(-2, 2, allow_nan=False)
    | st.text(string.printable, max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(string.ascii_letters, max_size=12), inner,
                                                                 max_size=3),
    max_leaves=8,
)
openai_fields = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2, allow_nan=False),
    "top_p": st.floats(0, 1, allow_nan=False),
    "n": st.integers(1, 3),
    "max_tokens": st.integers(1, 100_000),
    "max_completion_tokens": st.integers(1, 100_000),
    "stop": st.sampled_from(["\n", ["x", "y"]]),
    "seed": st.integers(0, 2**31),
    # the end user recorded for attribution: good ones, and what is refused (not a string, too long, control
    # characters; 400 naming `user`)
    "user": st.text(string.ascii_letters, min_size=1, max_size=16) | st.text(max_size=300)
    | st.sampled_from([42, ["a"], {"id": 1}, True, "u" * 256, "u" * 257, "a\x00b", "", "=cmd"]),
    "presence_penalty": st.floats(-2, 2, allow_nan=False),
    "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}),
    "response_format": st.just({"type": "text"}),
    "service_tier": st.sampled_from(["auto", "default", "priority", "flex"]),
    "fake_chunks": st.integers(1, 6_000),
})
litellm_fields = st.dictionaries(st.sampled_from(LITELLM_PARAMS), json_values, max_size=4)
junk_fields = st.dictionaries(st.text(string.ascii_letters + "_-", min_size=1, max_size=16), json_values, max_size=2)
# X-Power-Fallback: absent, the two values it takes (any case), or anything else (400, param X-Power-Fallback)
fallbacks = st.one_of(st.none(), st.sampled_from(["downgrade", "none", "DownGrade", ""]),
                      st.text(string.ascii_letters + string.digits + " -,", max_size=12))
GOOD_FALLBACKS = ("downgrade", "none", "")
# X-Tags: absent, good lists (spaces, duplicates, empty elements), too many, too long, unsafe characters
TAG_CHARS = string.ascii_letters + string.digits + "._:-"
x_tags = st.one_of(
    st.none(),
    st.lists(st.text(TAG_CHARS, min_size=1, max_size=66), max_size=10).map(", ".join),
    st.lists(st.sampled_from(["a", "b", "support", "x" * 64]), max_size=12).map(",".join),
    st.text(TAG_CHARS + " ,;=@/\"'", max_size=40).map(str.strip),
)
SAFE_TAG = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def tags_ok(header: str | None) -> bool:
    """The contract's rule, spelled independently of proxy/gateway/attribution.py."""
    tags = [t.strip(" \t") for t in (header or "").split(",")]
    tags = [t for t in tags if t]
    return all(SAFE_TAG.fullmatch(t) for t in tags) and len(set(tags)) <= 8


def user_ok(body: dict[str, Any]) -> bool:
    user = body.get("user")
    return user is None or (isinstance(user, str) and len(user) <= 256 and not re.search(r"[\x00-\x1f\x7f-\x9f]", user))


@pytest.fixture(scope="module")
def fuzz_member(gateway: Gateway) -> Member:
    return make_member(gateway, credit=10**12)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(openai_fields, litellm_fields, junk_fields, fallbacks, x_tags)
def test_whatever_the_body_only_the_allowlist_reaches_the_provider_under_the_holds_cap(
    fuzz_member: Member, fake_provider: services.Service, ours: dict[str, Any], theirs: dict[str, Any],
    junk: dict[str, Any], fallback: str | None, tags: str | None,
) -> None:
    mark = "fuzz-" + secrets.token_hex(6)
    rid = "fz-" + secrets.token_hex(8)
    body = {**junk, **theirs, **ours, "model": "fake-medium",
            "messages": [{"role": "user", "content": f"hello {mark}"}]}
    with fuzz_member.http() as http:
        headers = {"x-request-id": rid, "x-power-level": "balanced"}
        if fallback is not None:
            headers["x-power-fallback"] = fallback
        if tags is not None:
            headers["x-tags"] = tags
        response = http.post("/v1/chat/completions", json=body, headers=headers)
        text = response.read()
    assert response.status_code < 500, text
    event(f"status {response.status_code}")
    seen = provider_saw(fake_provider, mark)
    if response.status_code != 200:
        error = orjson.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_value", error
        if fallback is not None and fallback.strip().lower() not in GOOD_FALLBACKS and tags_ok(tags) and user_ok(body):
            assert error["param"] == "X-Power-Fallback", error  # (bad attribution is found first, with the body)
        # attribution is refused only when it is bad (and, being parsed with the body, before the allowlist)
        assert (error["param"] == "X-Tags") <= (not tags_ok(tags)), (tags, error)
        assert (error["param"] == "user") <= (not user_ok(body)), (body.get("user"), error)
        assert seen == []
        assert fuzz_member.get(f"/v1/requests/{rid}").status_code == 404
        return
    assert tags_ok(tags) and user_ok(body), (tags, body.get("user"))  # nothing bad is admitted
    [sent] = seen
    extra = set(sent["body"]) - CHAT - CONTROLS
    assert not extra, extra
    assert sent["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert mark not in orjson.dumps(sent["headers"]).decode()
    caps = [sent["body"][k] for k in ("max_tokens", "max_completion_tokens") if k in sent["body"]]
    assert caps and max(caps) <= CAP
    record = settled(fuzz_member, rid)
    assert record["status"] == "settled"
    assert record["charged_millicredits"] <= record["held_millicredits"]
    assert record["completion_tokens"] <= CAP * body.get("n", 1)


def test_the_fuzz_reaches_the_provider(gateway: Gateway, fuzz_member: Member, fake_provider: services.Service) -> None:
    """The property above is not vacuous: a plain body passes and is seen by the provider."""
    member = fuzz_member
    mark = "fuzz-" + secrets.token_hex(6)
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {member.key}"}, timeout=30) as http:
        response = http.post("/v1/chat/completions", json={
            "model": "fake-medium", "messages": [{"role": "user", "content": mark}], "max_tokens": 10**5})
    assert response.status_code == 200
    [sent] = provider_saw(fake_provider, mark)
    assert sent["body"]["max_tokens"] == CAP
