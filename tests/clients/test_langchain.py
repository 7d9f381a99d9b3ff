"""LangChain's `ChatOpenAI` (langchain-openai, pinned in pyproject's test extra) against the real stack, on
chat completions and with `use_responses_api=True`: the text, the usage metadata LangChain reports equal to
the gateway's own token counts, the exact charge, and a 402 surfaced as openai's own error."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tests.e2e.conftest import Gateway, Member, make_member
from tests.e2e.test_billing import expected_charge, settled

ANSWER = "Hello w1 w2 w3 w4 w5"  # the fake provider's default answer (devstack/fake_provider.py)
PROMPT: list[BaseMessage] = [HumanMessage("hello from langchain")]


def chat(member: Member, request_id: str, level: str, **options: Any) -> ChatOpenAI:
    """A ChatOpenAI for one request: its id and power level ride on the client's default headers."""
    return ChatOpenAI(model=options.pop("model", "fake-small"), base_url=f"{member.gateway.url}/v1",
                      api_key=SecretStr(member.key), max_retries=0,
                      default_headers={"X-Request-Id": request_id, "X-Power-Level": level}, **options)


def counts(message: AIMessage) -> tuple[int, int, int]:
    usage = message.usage_metadata
    assert usage is not None
    return usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]


def recorded(record: dict[str, Any]) -> tuple[int, int, int]:
    return record["prompt_tokens"], record["completion_tokens"], record["prompt_tokens"] + record["completion_tokens"]


def joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    assert chunks
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def charge(record: dict[str, Any], model: str, multiplier: str) -> int:
    return expected_charge(model, "starter", Decimal(multiplier), record["prompt_tokens"], record["completion_tokens"])


def test_invoke_reports_the_gateways_token_counts_and_is_charged_exactly(gw: Gateway) -> None:
    member = make_member(gw)
    message = chat(member, "lc-invoke-1", "eco").invoke(PROMPT)
    assert message.text == ANSWER
    record = settled(member, "lc-invoke-1")
    assert (record["status"], record["usage_source"]) == ("settled", "provider")
    assert counts(message) == recorded(record)
    assert record["charged_millicredits"] == charge(record, "fake-small", "0.1") > 0


def test_stream_ends_with_usage_metadata_equal_to_the_gateways(gw: Gateway) -> None:
    member = make_member(gw)
    chunks = list(chat(member, "lc-stream-1", "balanced", model="fake-medium", stream_usage=True).stream(PROMPT))
    assert len(chunks) > 2
    total = joined(chunks)
    assert total.text == ANSWER
    record = settled(member, "lc-stream-1")
    assert (record["status"], record["usage_source"]) == ("settled", "provider")
    assert counts(total) == recorded(record)
    assert record["charged_millicredits"] == charge(record, "fake-medium", "0.25") > 0


def test_stream_without_stream_usage_carries_no_usage_yet_is_charged(gw: Gateway) -> None:
    member = make_member(gw)
    chunks = list(chat(member, "lc-stream-2", "eco", stream_usage=False).stream(PROMPT))
    total = joined(chunks)
    assert total.text == ANSWER and total.usage_metadata is None
    record = settled(member, "lc-stream-2")
    assert (record["usage_source"], record["completion_tokens"]) == ("provider", 6)
    assert record["charged_millicredits"] == charge(record, "fake-small", "0.1") > 0


async def test_async_stream_on_the_responses_api_reports_the_gateways_counts(gw: Gateway) -> None:
    member = make_member(gw)
    llm = chat(member, "lc-resp-async", "eco", use_responses_api=True)
    total = joined([chunk async for chunk in llm.astream(PROMPT)])
    assert total.text == ANSWER
    record = settled(member, "lc-resp-async")
    assert (record["status"], record["usage_source"]) == ("settled", "provider")
    assert counts(total) == recorded(record)
    assert record["charged_millicredits"] == charge(record, "fake-small", "0.1") > 0


def test_responses_api_invoke_is_charged_exactly(gw: Gateway) -> None:
    member = make_member(gw)
    message = chat(member, "lc-resp-1", "eco", use_responses_api=True).invoke(PROMPT)
    assert message.text == ANSWER
    assert str(message.response_metadata["id"]).startswith("resp_")
    record = settled(member, "lc-resp-1")
    assert (record["status"], record["usage_source"]) == ("settled", "provider")
    assert counts(message) == recorded(record)
    assert record["charged_millicredits"] == charge(record, "fake-small", "0.1") > 0


def test_responses_api_stream_is_charged_from_response_completed(gw: Gateway) -> None:
    member = make_member(gw)
    llm = chat(member, "lc-resp-2", "precision", model="fake-large", use_responses_api=True)
    total = joined(list(llm.stream(PROMPT)))
    assert total.text == ANSWER
    record = settled(member, "lc-resp-2")
    assert (record["status"], record["usage_source"]) == ("settled", "provider")
    assert counts(total) == recorded(record)
    assert record["charged_millicredits"] == charge(record, "fake-large", "1.0") > 0


@pytest.mark.parametrize("responses_api", [False, True])
def test_402_surfaces_as_openais_status_error_with_the_contracts_body(gw: Gateway, responses_api: bool) -> None:
    # the same request by a funded member first: its hold is the amount the refusal must name
    funded, broke = make_member(gw), make_member(gw, credit=None)
    chat(funded, f"lc-held-{int(responses_api)}", "eco", use_responses_api=responses_api).invoke(PROMPT)
    held = settled(funded, f"lc-held-{int(responses_api)}")["held_millicredits"]
    rid = f"lc-402-{int(responses_api)}"
    with pytest.raises(openai.APIStatusError) as caught:
        chat(broke, rid, "eco", use_responses_api=responses_api).invoke(PROMPT)
    error = caught.value
    assert type(error) is openai.APIStatusError and error.status_code == 402
    assert error.body == {
        "message": f"The organization's credit pool cannot cover this request ({held} millicredits held).",
        "type": "insufficient_credits", "param": None, "code": "org_pool_exhausted"}
    assert error.response.headers["x-request-id"] == rid
    assert broke.get(f"/v1/requests/{rid}").status_code == 404  # nothing was held
