"""openai-node (the npm package `openai`, pinned in tests/clients/node/package-lock.json and installed by
`make install`) against the real stack: each test runs one small script of tests/clients/node/ with node,
which prints one JSON line of what the SDK gave it; the test checks it against the gateway's own record
of the request (`/v1/requests/{id}`) and the contract's charge formula."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Gateway, Member, make_member
from tests.e2e.test_billing import MARKUP, expected_charge, settled

NODE_DIR = Path(__file__).resolve().parent / "node"
ANSWER = "Hello w1 w2 w3 w4 w5"  # the fake provider's default answer (devstack/fake_provider.py)
CREDIT = 100_000_000  # what make_member grants the org
EMBED_PRICE = Decimal("0.00000002")  # fake-embed's input price in litellm_config.yaml; in no power level: x1


def node(script: str, gateway_url: str, key: str, **args: Any) -> dict[str, Any]:
    """Run tests/clients/node/<script> against the gateway and return the JSON line it printed."""
    exe = shutil.which("node")
    assert exe is not None, "node is missing: run `make install` (scripts/install-system.sh installs it)"
    assert (NODE_DIR / "node_modules" / "openai" / "package.json").exists(), (
        "openai-node is not installed: run `make install` (scripts/install-node-clients.sh)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "CG_BASE_URL": f"{gateway_url}/v1", "CG_API_KEY": key}
    done = subprocess.run([exe, script, json.dumps(args)], cwd=NODE_DIR, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run(member: Member, script: str, **args: Any) -> dict[str, Any]:
    return node(script, member.gateway.url, member.key, **args)


def charge_of(record: dict[str, Any], model: str, multiplier: str) -> int:
    return expected_charge(model, "starter", Decimal(multiplier), record["prompt_tokens"], record["completion_tokens"])


def test_chat_non_stream_is_charged_exactly_and_says_so_in_its_headers(gw: Gateway) -> None:
    member = make_member(gw)
    out = run(member, "chat.mjs", model="fake-small", content="hi from node", requestId="node-chat-1",
              powerLevel="eco")
    assert out["content"] == ANSWER
    record = settled(member, "node-chat-1")
    assert (record["status"], record["usage_source"]) == ("settled", "provider")
    usage = out["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (record["prompt_tokens"],
                                                                    record["completion_tokens"])
    assert "cost" not in usage
    charge = charge_of(record, "fake-small", "0.1")
    headers = out["headers"]
    assert headers["x-request-id"] == "node-chat-1"
    assert int(headers["x-credits-charged"]) == record["charged_millicredits"] == charge > 0
    assert int(headers["x-credits-held"]) == record["held_millicredits"] >= charge
    assert int(headers["x-credits-remaining"]) == CREDIT - charge


def test_chat_stream_without_include_usage_never_shows_the_usage_chunk_but_is_charged(gw: Gateway) -> None:
    member = make_member(gw)
    out = run(member, "chat.mjs", model="fake-small", content="stream from node", requestId="node-stream-1",
              powerLevel="eco", stream=True)
    assert out["content"] == ANSWER and out["chunks"] > 1
    assert out["usageChunks"] == []
    headers = out["headers"]
    assert headers["x-request-id"] == "node-stream-1" and int(headers["x-credits-held"]) > 0
    assert headers["x-credits-charged"] is None  # a stream's charge is known only after it ends
    record = settled(member, "node-stream-1")
    assert (record["status"], record["usage_source"]) == ("settled", "provider")
    assert record["completion_tokens"] == 6
    assert record["charged_millicredits"] == charge_of(record, "fake-small", "0.1") > 0
    assert member.get("/v1/credits").json()["pool"] == {
        "balance": CREDIT - record["charged_millicredits"], "held": 0,
        "available": CREDIT - record["charged_millicredits"]}


def test_chat_stream_with_include_usage_ends_with_the_usage_the_gateway_charged(gw: Gateway) -> None:
    member = make_member(gw)
    out = run(member, "chat.mjs", model="fake-medium", content="usage please", requestId="node-stream-2",
              powerLevel="balanced", stream=True, includeUsage=True)
    assert out["content"] == ANSWER
    [last] = out["usageChunks"]
    assert last["choices"] == 0
    record = settled(member, "node-stream-2")
    assert (last["usage"]["prompt_tokens"], last["usage"]["completion_tokens"]) == (
        record["prompt_tokens"], record["completion_tokens"])
    assert last["usage"]["total_tokens"] == record["prompt_tokens"] + record["completion_tokens"]
    assert "cost" not in last["usage"]
    assert record["charged_millicredits"] == charge_of(record, "fake-medium", "0.25") > 0


def test_embeddings_are_charged_for_their_input_tokens(gw: Gateway) -> None:
    member = make_member(gw)
    out = run(member, "embeddings.mjs", model="fake-embed", input=["alpha beta gamma", "delta"],
              requestId="node-embed-1")
    assert out["count"] == 2 and len(set(out["dimensions"])) == 1 and out["dimensions"][0] > 0
    record = settled(member, "node-embed-1")
    assert out["usage"]["prompt_tokens"] == record["prompt_tokens"] > 0
    assert record["completion_tokens"] == 0
    charge = math.ceil(record["prompt_tokens"] * EMBED_PRICE * 1000 * 1000 * (1 + MARKUP["starter"]))
    assert int(out["headers"]["x-credits-charged"]) == record["charged_millicredits"] == charge > 0


def test_402_is_the_sdks_api_error_with_the_contracts_code_and_body(gw: Gateway) -> None:
    broke = make_member(gw, credit=None)
    with broke.http() as http:  # the same refusal as curl sees it: the body the SDK must carry as is
        raw = http.post("/v1/chat/completions", json={"model": "fake-small", "messages": [
            {"role": "user", "content": "hi"}]}, headers={"x-request-id": "node-402-raw"})
    assert raw.status_code == 402
    body = raw.json()["error"]
    assert {k: body[k] for k in ("type", "param", "code")} == {
        "type": "insufficient_credits", "param": None, "code": "org_pool_exhausted"}
    for stream in (False, True):
        rid = f"node-402-{int(stream)}"
        out = run(broke, "error.mjs", model="fake-small", requestId=rid, stream=stream)
        assert out == {"raised": "APIError", "isAuthenticationError": False, "status": 402,
                       "code": "org_pool_exhausted", "type": "insufficient_credits", "param": None, "error": body,
                       "message": f"402 {body['message']}", "requestID": rid}
        assert broke.get(f"/v1/requests/{rid}").status_code == 404  # nothing was held
    assert broke.get("/v1/credits").json()["pool"] == {"balance": 0, "held": 0, "available": 0}


def test_401_is_the_sdks_authentication_error(gw: Gateway) -> None:
    out = node("error.mjs", gw.url, "sk-cg-not-a-key", model="fake-small", requestId="node-401")
    body = {"message": "Invalid API key.", "type": "authentication_error", "param": None, "code": "invalid_api_key"}
    assert out == {"raised": "AuthenticationError", "isAuthenticationError": True, "status": 401,
                   "code": "invalid_api_key", "type": "authentication_error", "param": None, "error": body,
                   "message": "401 Invalid API key.", "requestID": "node-401"}
    assert "sk-cg-not-a-key" not in json.dumps(out)


def test_responses_create_non_stream_is_charged_exactly(gw: Gateway) -> None:
    member = make_member(gw)
    out = run(member, "responses.mjs", model="fake-small", input="responses from node", instructions="be brief",
              requestId="node-resp-1", powerLevel="eco")
    assert (out["status"], out["text"]) == ("completed", ANSWER)
    assert out["id"].startswith("resp_")
    record = settled(member, "node-resp-1")
    assert (record["usage_source"], record["prompt_tokens"], record["completion_tokens"]) == (
        "provider", out["usage"]["input_tokens"], out["usage"]["output_tokens"])
    assert "cost" not in out["usage"]
    charge = charge_of(record, "fake-small", "0.1")
    assert int(out["headers"]["x-credits-charged"]) == record["charged_millicredits"] == charge > 0
    assert int(out["headers"]["x-credits-remaining"]) == CREDIT - charge


def test_responses_create_stream_is_charged_from_response_completed(gw: Gateway) -> None:
    member = make_member(gw)
    out = run(member, "responses.mjs", model="fake-medium", input="stream responses from node",
              requestId="node-resp-2", powerLevel="balanced", stream=True)
    assert out["types"][0] == "response.created" and out["types"][-1] == "response.completed"
    assert "response.output_text.delta" in out["types"]
    assert (out["status"], out["text"]) == ("completed", ANSWER)
    assert out["headers"]["x-credits-charged"] is None and int(out["headers"]["x-credits-held"]) > 0
    record = settled(member, "node-resp-2")
    assert (record["usage_source"], record["prompt_tokens"], record["completion_tokens"]) == (
        "provider", out["usage"]["input_tokens"], out["usage"]["output_tokens"])
    assert record["charged_millicredits"] == charge_of(record, "fake-medium", "0.25") > 0


def test_the_lock_pins_one_exact_version_without_download_addresses() -> None:
    """The npm lock is what `npm ci` installs: the SDK at the exact version package.json names, and no
    registry address in the committed file."""
    package = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    pinned = package["dependencies"]["openai"]
    assert pinned[0].isdigit() and lock["packages"]["node_modules/openai"]["version"] == pinned
    assert lock["packages"]["node_modules/openai"]["integrity"].startswith("sha512-")
    assert "resolved" not in json.dumps(lock)
    installed = json.loads((NODE_DIR / "node_modules" / "openai" / "package.json").read_text())
    assert installed["version"] == pinned

