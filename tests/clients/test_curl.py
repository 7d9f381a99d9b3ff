"""curl, the last client of the list, on `POST /v1/responses` with the shipped litellm_config.yaml (the one
`make run` renders): every fake-provider chat model answers it through the real LiteLLM's Responses-to-chat
bridge (`use_chat_completions_api: true`) and is charged exactly, stream and not."""

from __future__ import annotations

import json
import shutil
import subprocess
from decimal import Decimal
from typing import Any

import pytest
import yaml

from devstack import services
from tests.e2e.conftest import Gateway, Member, make_member
from tests.e2e.test_billing import expected_charge, settled

ANSWER = "Hello w1 w2 w3 w4 w5"  # the fake provider's default answer (devstack/fake_provider.py)
FAKE_PROVIDER = "http://127.0.0.1:8001/v1"  # the fake provider's address as the shipped config writes it


def curl(member: Member, request_id: str, level: str, body: dict[str, Any]) -> tuple[dict[str, str], str]:
    """POST /v1/responses with curl as a user would paste it; returns (headers, body text)."""
    exe = shutil.which("curl")
    assert exe is not None, "curl is missing: run `make install` (scripts/install-system.sh installs it)"
    done = subprocess.run(
        [exe, "-sS", "-N", "-D", "-", f"{member.gateway.url}/v1/responses", "-H", f"Authorization: Bearer {member.key}",
         "-H", "Content-Type: application/json", "-H", f"X-Request-Id: {request_id}", "-H", f"X-Power-Level: {level}",
         "--data", json.dumps(body)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    head, _, text = done.stdout.replace("\r\n", "\n").partition("\n\n")
    status, *fields = head.split("\n")
    assert status.split()[1] == "200", done.stdout
    headers = {name.lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    return headers, text


def test_the_shipped_config_bridges_every_fake_provider_chat_model() -> None:
    config = yaml.safe_load((services.ROOT / "litellm_config.yaml").read_text())
    chat = [d for d in config["model_list"] if d["litellm_params"].get("api_base") == FAKE_PROVIDER
            and d.get("model_info", {}).get("mode") in (None, "chat")]
    assert len(chat) == 9
    assert [d["model_name"] for d in chat if d["litellm_params"].get("use_chat_completions_api") is not True] == []


@pytest.mark.parametrize(("model", "level", "multiplier"), [
    ("fake-small", "eco", "0.1"), ("fake-medium", "balanced", "0.25"), ("fake-gpt-4o-mini", "balanced", "0.25"),
    ("fake-large", "precision", "1.0"),
])
def test_a_fake_model_answers_responses_and_is_charged_exactly(gw: Gateway, model: str, level: str,
                                                               multiplier: str) -> None:
    member = make_member(gw)
    rid = f"curl-resp-{model}"
    headers, text = curl(member, rid, level, {"model": model, "input": "hello from curl"})
    answer = json.loads(text)
    assert answer["status"] == "completed" and answer["model"] == model
    assert [c["text"] for item in answer["output"] for c in item["content"]] == [ANSWER]
    record = settled(member, rid)
    assert (record["usage_source"], record["prompt_tokens"], record["completion_tokens"]) == (
        "provider", answer["usage"]["input_tokens"], answer["usage"]["output_tokens"])
    charge = expected_charge(model, "starter", Decimal(multiplier), record["prompt_tokens"],
                             record["completion_tokens"])
    assert int(headers["x-credits-charged"]) == record["charged_millicredits"] == charge > 0
    assert headers["x-request-id"] == rid and "cost" not in answer["usage"]


def test_a_streamed_response_by_curl_is_charged_from_response_completed(gw: Gateway) -> None:
    member = make_member(gw)
    headers, text = curl(member, "curl-resp-stream", "eco", {"model": "fake-small", "input": "stream", "stream": True})
    assert headers["content-type"].startswith("text/event-stream") and "x-credits-charged" not in headers
    events = [json.loads(line[len("data: "):]) for line in text.split("\n") if line.startswith("data: {")]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == ANSWER
    usage = events[-1]["response"]["usage"]
    record = settled(member, "curl-resp-stream")
    assert (record["usage_source"], record["prompt_tokens"], record["completion_tokens"]) == (
        "provider", usage["input_tokens"], usage["output_tokens"])
    assert record["charged_millicredits"] == expected_charge(
        "fake-small", "starter", Decimal("0.1"), usage["input_tokens"], usage["output_tokens"]) > 0
