"""POST /v1/responses billed like chat, and GET/DELETE /v1/responses/{id} for the caller's own only, through
`creditgate serve`, the real LiteLLM 1.106.2 and the fake provider, with openai-python's `client.responses`.

The fake provider speaks chat completions only, so this LiteLLM's deployments set `use_chat_completions_api`
(LiteLLM's bridge from the Responses API to chat completions: litellm/responses/main.py); fake-medium also
streams slowly (`extra_body` on the deployment: the bridge forwards no request field of ours to the
provider) and fake-large's provider drops the connection after 3 chunks."""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

from devstack import services
from proxy.gateway.params import CHAT
from tests.e2e.conftest import Gateway, Member, make_member, start_gateway
from tests.e2e.test_allowlist_fuzz import LITELLM_PARAMS, json_values
from tests.e2e.test_billing import expected_charge, settled
from tests.e2e.test_trust_boundary import PROVIDER_KEY

BRIDGED = "      use_chat_completions_api: true\n"
SLOW = "      extra_body: {fake_delay_ms: 100, fake_chunks: 60}\n"
BROKEN = "      extra_body: {fake_fail_after: 3, fake_chunks: 20}\n"


@pytest.fixture(scope="module")
def bridged_litellm(fake_provider: services.Service) -> Iterator[services.Service]:
    config = services.render_litellm_config(fake_provider.url, services.scratch("litellm-resp-") / "litellm.yaml")
    text = config.read_text()
    for model in ("fake-small", "fake-medium", "fake-large", "gpt-4o-mini"):
        extra = SLOW if model == "fake-medium" else BROKEN if model == "fake-large" else ""
        line = f"      model: openai/{model}\n"
        assert line in text
        text = text.replace(line, line + extra)
    assert text.count(BRIDGED) >= 4  # the shipped config bridges the fake provider's models already
    config.write_text(text)
    svc = services.start_litellm(config)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def gw(pg: services.Service, redis_server: services.Service, bridged_litellm: services.Service,
       fake_provider: services.Service) -> Iterator[Gateway]:
    gateway = start_gateway(pg, redis_server, bridged_litellm, fake_provider, name="e2e_responses")
    yield gateway
    gateway.stop()


def provider_saw(fake_provider: services.Service, marker: str) -> dict[str, Any]:
    """The chat request the fake provider received for the input carrying `marker`."""
    for seen in httpx.get(f"{fake_provider.url}/_requests").json():
        if marker in str(seen["body"].get("messages")):
            return dict(seen["body"])
    raise AssertionError(f"the provider never saw {marker}")


def test_non_stream_response_is_charged_exactly_and_its_cap_is_the_power_levels(
        gw: Gateway, fake_provider: services.Service) -> None:
    member = make_member(gw)
    raw = member.client().responses.with_raw_response.create(
        model="fake-small", input="non-stream marker r1", instructions="be brief", max_output_tokens=10**6,
        extra_headers={"X-Request-Id": "resp-1", "X-Power-Level": "eco"})
    answer = raw.parse()
    assert answer.output_text == "Hello w1 w2 w3 w4 w5"
    assert answer.usage is not None and "cost" not in raw.http_response.json()["usage"]
    assert not any(h.startswith(("x-litellm", "llm_provider")) for h in raw.headers)
    # the level's cap (eco: 2000, under the model's 8192) reached the provider as the bridge's max_tokens
    assert provider_saw(fake_provider, "non-stream marker r1")["max_tokens"] == 2000
    record = settled(member, "resp-1")
    assert (record["usage_source"], record["prompt_tokens"], record["completion_tokens"]) == (
        "provider", answer.usage.input_tokens, answer.usage.output_tokens)
    charge = expected_charge("fake-small", "starter", Decimal("0.1"), answer.usage.input_tokens,
                             answer.usage.output_tokens)
    assert int(raw.headers["x-credits-charged"]) == record["charged_millicredits"] == charge > 0


def test_injected_cap_when_absent_and_stream_usage_from_response_completed(
        gw: Gateway, fake_provider: services.Service) -> None:
    member = make_member(gw)
    stream = member.client().responses.create(
        model="fake-small", input=[{"role": "user", "content": [{"type": "input_text", "text": "stream marker r2"}]}],
        stream=True, extra_headers={"X-Request-Id": "resp-2", "X-Power-Level": "eco"})
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert text == "Hello w1 w2 w3 w4 w5"
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    usage = completed.response.usage
    assert usage is not None and usage.output_tokens == 6
    assert "cost" not in usage.model_dump()
    sent = provider_saw(fake_provider, "stream marker r2")
    assert sent["max_tokens"] == 2000 and sent["stream_options"] == {"include_usage": True}
    record = settled(member, "resp-2")
    assert (record["usage_source"], record["prompt_tokens"], record["completion_tokens"]) == (
        "provider", usage.input_tokens, usage.output_tokens)
    assert record["charged_millicredits"] == expected_charge("fake-small", "starter", Decimal("0.1"),
                                                             usage.input_tokens, usage.output_tokens)


def test_a_client_that_leaves_mid_stream_is_charged_the_estimate(gw: Gateway) -> None:
    member = make_member(gw)
    headers = {"authorization": f"Bearer {member.key}", "x-request-id": "resp-3", "x-power-level": "balanced"}
    deltas = 0
    with httpx.Client(base_url=gw.url, timeout=30) as http, http.stream(
            "POST", "/v1/responses", headers=headers, json={"model": "fake-medium", "input": "a long one",
                                                            "stream": True}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            deltas += "response.output_text.delta" in line
            if deltas == 4:
                break
    record = settled(member, "resp-3")
    assert record["status"] == "settled" and record["usage_source"] == "estimate"
    assert 4 <= record["completion_tokens"] < 60
    assert record["charged_millicredits"] == expected_charge(
        "fake-medium", "starter", Decimal("0.25"), record["prompt_tokens"], record["completion_tokens"])
    assert 0 < record["charged_millicredits"] < record["held_millicredits"]
    assert member.get("/v1/credits").json()["pool"]["held"] == 0


def test_a_broken_stream_ends_with_the_gateways_error_event_and_settles_the_estimate(gw: Gateway) -> None:
    member = make_member(gw)
    headers = {"authorization": f"Bearer {member.key}", "x-request-id": "resp-4", "x-power-level": "precision"}
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        resp = http.post("/v1/responses", headers=headers, json={"model": "fake-large", "input": "x", "stream": True})
    events = [line for line in resp.text.split("\n\n") if line]
    assert events[-1] == ('data: {"error":{"message":"The model service failed to answer.","type":"upstream_error",'
                          '"param":null,"code":"upstream_failed"}}')
    assert "[DONE]" not in resp.text and "litellm" not in resp.text.lower()
    # measured: LiteLLM's bridge mostly sends its error event before any delta of the 3 chunks the provider
    # sent (the stream had started: 200), sometimes after some; the estimate is the prompt plus what was streamed
    record = settled(member, "resp-4")
    assert record["usage_source"] == "estimate" and record["prompt_tokens"] > 0
    assert (record["completion_tokens"] > 0) == ("response.output_text.delta" in resp.text)
    assert record["charged_millicredits"] == expected_charge(
        "fake-large", "starter", Decimal("1.0"), record["prompt_tokens"], record["completion_tokens"])


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "f"}, {"type": "file_search", "vector_store_ids": ["v"]}]},
     "tools[1].type"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:9"}]}, "tools[0].type"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
])
def test_what_cannot_be_priced_is_400_and_nothing_is_held(gw: Gateway, body: dict[str, Any], param: str) -> None:
    member = make_member(gw)
    rid = f"refused-{abs(hash(param)) % 10**8}-{int(time.time() * 1000) % 10**8}"
    with member.http() as http:
        resp = http.post("/v1/responses", headers={"x-request-id": rid},
                         json={"model": "fake-small", "input": "x", **body})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_value", param)
        assert http.get(f"/v1/requests/{rid}").status_code == 404  # nothing was held
    assert member.get("/v1/credits").json()["pool"]["held"] == 0


def own_response(member: Member, model: str = "fake-small") -> str:
    answer = member.client().responses.create(model=model, input="remember me")
    return answer.id


def test_previous_response_id_is_bounded_by_the_context_window_or_refused(gw: Gateway) -> None:
    member, stranger = make_member(gw), make_member(gw)
    mine, theirs = own_response(member), own_response(stranger)
    with member.http() as http:
        # another member's response: refused as unknown, before anything is held
        resp = http.post("/v1/responses", headers={"x-request-id": "prev-1"},
                         json={"model": "fake-gpt-4o-mini", "input": "more", "previous_response_id": theirs})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "previous_response_id"
        assert http.get("/v1/requests/prev-1").status_code == 404
        # the caller's own, on a model whose context window nobody knows: cannot be bounded
        resp = http.post("/v1/responses", json={"model": "fake-small", "input": "more", "previous_response_id": mine})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "previous_response_id"
        assert "context window is unknown" in resp.json()["error"]["message"]
        # the caller's own, on a model with a known window (LiteLLM's model info: 128,000 for gpt-4o-mini)
        resp = http.post("/v1/responses", headers={"x-request-id": "prev-2", "x-power-level": "balanced"},
                         json={"model": "fake-gpt-4o-mini", "input": "more", "previous_response_id": mine})
        assert resp.status_code == 200, resp.text
    held = expected_charge("fake-gpt-4o-mini", "starter", Decimal("0.25"), 128_000, 4000)
    assert int(resp.headers["x-credits-held"]) == held
    record = settled(member, "prev-2")
    assert record["held_millicredits"] == held and record["usage_source"] == "provider"


def test_get_and_delete_reach_only_the_callers_own_responses(gw: Gateway) -> None:
    member, colleague = make_member(gw), make_member(gw)
    mine = own_response(member)
    for who, rid in ((colleague, mine), (member, "resp_never_served"), (member, "x" * 2000)):
        with who.http() as http:
            for method in ("GET", "DELETE"):
                for prefix in ("/v1", "/api/v1/llm"):
                    resp = http.request(method, f"{prefix}/responses/{rid}")
                    assert resp.status_code == 404, resp.text
                    assert resp.json()["error"]["type"] == "not_found_error"
                    assert resp.json()["error"]["code"] == "response_not_found"
    # the owner's request is forwarded: LiteLLM's bridge keeps no response to read back (measured: its
    # provider answers 404), which the caller hears as the same 404
    resp = member.get(f"/v1/responses/{mine}")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "response_not_found"
    assert "litellm" not in resp.text.lower()


def test_get_is_not_billed(gw: Gateway) -> None:
    member = make_member(gw)
    mine = own_response(member)
    before = member.get("/v1/credits").json()
    for method in ("GET", "DELETE"):
        with member.http() as http:
            assert http.request(method, f"/v1/responses/{mine}").status_code == 404  # the bridge keeps none
    assert member.get("/v1/credits").json() == before


def test_openai_client_refusal_surfaces_as_bad_request(gw: Gateway) -> None:
    member = make_member(gw)
    with pytest.raises(openai.BadRequestError) as err:
        member.client().responses.create(model="fake-small", input="x", tools=[{"type": "web_search"}])
    assert err.value.status_code == 400 and err.value.body["param"] == "tools[0].type"  # type: ignore[index]


responses_fields = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2, allow_nan=False),
    "top_p": st.floats(0, 1, allow_nan=False),
    "max_output_tokens": st.integers(1, 100_000),
    "max_tokens": st.integers(1, 100_000),
    "instructions": st.text(string.printable, max_size=20),
    "user": st.text(string.ascii_letters, min_size=1, max_size=16),
    "stream": st.booleans(),
    "store": st.booleans(),
    "background": st.booleans(),
    "truncation": st.sampled_from(["auto", "disabled"]),
    "service_tier": st.sampled_from(["auto", "default", "priority", "flex"]),
    "tools": st.lists(st.sampled_from([{"type": "function", "name": "f", "parameters": {"type": "object"}},
                                       {"type": "web_search"}, {"type": "file_search"},
                                       {"type": "code_interpreter"}, {"type": "image_generation"}]), max_size=2),
    "previous_response_id": st.text(string.ascii_letters, min_size=1, max_size=12),
    "conversation": st.just("conv_1"),
    "prompt": st.just({"id": "pmpt_1"}),
})


@pytest.fixture(scope="module")
def fuzz_member(gw: Gateway) -> Member:
    return make_member(gw, credit=10**12)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(responses_fields, st.dictionaries(st.sampled_from(LITELLM_PARAMS), json_values, max_size=3),
       st.dictionaries(st.text(string.ascii_letters + "_-", min_size=1, max_size=16), json_values, max_size=2))
def test_fuzz_only_the_allowlist_reaches_the_provider_under_the_holds_cap(
    fuzz_member: Member, fake_provider: services.Service, ours: dict[str, Any], theirs: dict[str, Any],
    junk: dict[str, Any],
) -> None:
    mark = "fuzz-" + secrets.token_hex(6)
    rid = "rz-" + secrets.token_hex(8)
    body = {**junk, **theirs, **ours, "model": "fake-small", "input": f"hello {mark}"}
    with fuzz_member.http() as http:
        response = http.post("/v1/responses", json=body, headers={"x-request-id": rid, "x-power-level": "eco"})
        text = response.read()
    assert response.status_code < 500, text
    seen = [s for s in httpx.get(f"{fake_provider.url}/_requests").json() if mark in str(s["body"].get("messages"))]
    if response.status_code != 200:
        error = orjson.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_value", error
        assert seen == []
        assert fuzz_member.get(f"/v1/requests/{rid}").status_code == 404
        return
    [sent] = seen
    assert not set(sent["body"]) - CHAT, sent["body"]  # the bridge's chat request: OpenAI's chat fields only
    assert sent["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert mark not in orjson.dumps(sent["headers"]).decode()
    assert 0 < sent["body"]["max_tokens"] <= 2000  # eco's cap, whatever max_output_tokens asked
    record = settled(fuzz_member, rid)
    assert record["status"] == "settled"
    assert record["charged_millicredits"] <= record["held_millicredits"]


def test_the_route_is_served_under_api_v1_llm_too(gw: Gateway) -> None:
    member = make_member(gw)
    client = openai.OpenAI(base_url=f"{gw.url}/api/v1/llm", api_key=member.key, max_retries=0)
    raw = client.responses.with_raw_response.create(model="fake-small", input="hi", extra_headers={
        "X-Request-Id": "resp-llm-1", "X-Power-Level": "eco"})
    usage = raw.parse().usage
    assert usage is not None
    record = settled(member, "resp-llm-1")
    assert record["charged_millicredits"] == int(raw.headers["x-credits-charged"]) == expected_charge(
        "fake-small", "starter", Decimal("0.1"), usage.input_tokens, usage.output_tokens)
