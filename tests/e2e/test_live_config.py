"""The operator's LiteLLM config as it is, and prices that change without a restart, through the real stack:
`creditgate serve` in front of a real LiteLLM 1.106.2 (offline cost map) and the fake provider, with real
PostgreSQL and Redis, all reading one LiteLLM config.

The config names `gpt-4o-mini` and `text-embedding-3-small` without prices or modes, a wildcard route
`openai/gpt-4o*`, a model the config prices itself (`flat`) and one nobody can price (`mystery`). Expected
charges are the contract's formula over the prices' text in LiteLLM's own cost map file, computed here with
Fractions. The gateway is started before LiteLLM, as a sidecar may be."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import services
from devstack.admin_client import AdminClient
from devstack.stack import gateway_env, migrate
from tests.e2e.conftest import Gateway, Member, make_member
from tests.waiting import until_sync

COST_MAP: dict[str, Any] = json.loads(
    next(services.LITELLM_VENV.glob("lib/python3*/site-packages/litellm/model_prices_and_context_window_backup.json"))
    .read_text(), parse_float=Decimal)
MODELS = """
model_list:
  - model_name: gpt-4o-mini                      # as operators write it: no price, no mode
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{provider}/v1", api_key: sk-platform-upstream}}
  - model_name: embed
    litellm_params: {{model: openai/text-embedding-3-small, api_base: "{provider}/v1", api_key: sk-platform-upstream}}
  - model_name: "openai/gpt-4o*"                 # a wildcard: every gpt-4o model LiteLLM knows, priced per model
    litellm_params: {{model: "openai/gpt-4o*", api_base: "{provider}/v1", api_key: sk-platform-upstream}}
  - model_name: flat                             # priced by the config (no mode: every route it can price)
    litellm_params: {{model: openai/flat-model, api_base: "{provider}/v1", api_key: sk-platform-upstream,
                     input_cost_per_token: "{flat_in}", output_cost_per_token: "{flat_out}"}}
    model_info: {{id: flat-1}}
  - model_name: mystery                          # neither the config nor LiteLLM can price it
    litellm_params: {{model: openai/mystery-model, api_base: "{provider}/v1", api_key: sk-platform-upstream}}
litellm_settings: {{drop_params: true, num_retries: 0}}
router_settings: {{disable_cooldowns: true, num_retries: 0, allowed_fails: 1000000}}
general_settings: {{master_key: os.environ/LITELLM_MASTER_KEY}}
"""
POLICY = """
credits_per_usd: 1000
hold_ttl_seconds: 120
sweep_interval_seconds: 1
default_power_level: standard
power_levels:
  standard: {{multiplier: 1.0, max_tokens: 1000, models: [gpt-4o-mini, flat]}}
tiers:
  starter: {{markup: {markup}, models: ["*"]}}
forward_params:
  "*": [fake_chunks, fake_delay_ms, fake_tag]
"""
OLD, NEW = ("0.000001", "0.000002"), ("0.000003", "0.000005")
MESSAGES = [{"role": "user", "content": "one two three"}]  # the fake provider counts 3 words + 1 per message


@dataclass
class Stack:
    gateway: Gateway
    member: Member
    models: Path
    policy: Path
    provider: str
    before: dict[str, Any]  # what the gateway answered while LiteLLM was not up yet

    def write(self, flat: tuple[str, str] = OLD, markup: str = "0.4") -> None:
        write(self.models, self.policy, self.provider, flat, markup)


def write(models: Path, policy: Path, provider: str, flat: tuple[str, str] = OLD, markup: str = "0.4") -> None:
    models.write_text(MODELS.format(provider=provider, flat_in=flat[0], flat_out=flat[1]))
    policy.write_text(POLICY.format(markup=markup))


@pytest.fixture(scope="module")
def stack(pg: services.Service, redis_server: services.Service, fake_provider: services.Service) -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="creditgate-live-"))
    port = services.free_port()
    database = services.create_database(pg.url, "live_config")
    migrate(database)
    models, policy = tmp / "litellm_config.yaml", tmp / "policy.yaml"
    env = gateway_env(database, redis_server.url, f"http://127.0.0.1:{port}", litellm_config=models, policy=policy)
    write(models, policy, fake_provider.url)
    svc = services.start_gateway(env)  # LiteLLM is not up yet: a sidecar may start after the gateway
    gateway = Gateway(svc, env, AdminClient(svc.url, env["CREDITGATE_ADMIN_TOKEN"]))
    litellm: services.Service | None = None
    try:
        member = make_member(gateway)
        with member.http() as http:
            before = {"readyz": http.get("/readyz").json(),
                      "chat": http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})}
        litellm = services.start_litellm(models, port=port)
        yield Stack(gateway, member, models, policy, fake_provider.url, before)
    finally:
        gateway.admin.close()
        svc.stop()
        if litellm is not None:
            litellm.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def charge(prices: tuple[Any, Any], prompt: int, completion: int, markup: str = "0.4") -> int:
    """The contract's formula, exactly: ceil(usd * credits_per_usd * 1000 * (1 + markup) * multiplier)."""
    usd = prompt * Fraction(str(prices[0])) + completion * Fraction(str(prices[1]))
    return math.ceil(usd * 1000 * 1000 * (1 + Fraction(markup)))


def cost_map(model: str) -> tuple[Decimal, Decimal]:
    return COST_MAP[model]["input_cost_per_token"], COST_MAP[model]["output_cost_per_token"]


def metric(gw: Gateway, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", httpx.get(f"{gw.url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def serving_version(gw: Gateway) -> str:
    """The price version the gateway charges with now (its gauge at 1)."""
    text = httpx.get(f"{gw.url}/metrics").text
    return str(re.findall(r'^creditgate_price_version\{version="(pv_[0-9a-f]{16})"\} 1\.0$', text, re.M)[0])


def ready(stack: Stack) -> None:
    until_sync(lambda: httpx.get(f"{stack.gateway.url}/readyz").status_code == 200, 60, "/readyz")


def reload(stack: Stack, gw: Gateway | None = None, outcome: str = "ok") -> None:
    """SIGHUP the gateway's process and wait until it has reloaded (or refused) once more."""
    gw = gw or stack.gateway
    label = f'{{outcome="{outcome}"}}'
    before = metric(gw, "creditgate_config_reloads_total", label)
    os.kill(gw.svc.proc.pid, signal.SIGHUP)
    until_sync(lambda: metric(gw, "creditgate_config_reloads_total", label) > before, 20, f"a reload {outcome}")


def configure(stack: Stack, flat: tuple[str, str] = OLD, markup: str = "0.4") -> str:
    """Write both files and reload them; the price version now serving."""
    ready(stack)
    stack.write(flat, markup)
    reload(stack)
    return serving_version(stack.gateway)


def chat(member: Member, model: str, **extra: Any) -> httpx.Response:
    with member.http() as http:
        return http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra})


def record(member: Member, request_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def settled() -> bool:
        found.update(member.get(f"/v1/requests/{request_id}").json())
        return found.get("status") == "settled"

    until_sync(settled, 5, f"request {request_id} settled")
    return found


def table(stack: Stack, version: str) -> dict[str, Any]:
    prices: dict[str, Any] = stack.gateway.admin.get(f"/admin/price-versions/{version}")["prices"]
    return prices


def test_litellm_started_after_the_gateway(stack: Stack) -> None:
    """Until LiteLLM answers, the models that need its prices are refused as not priced and /readyz says
    why; once it is up, the gateway reads its model info without a restart."""
    readyz, refused = stack.before["readyz"], stack.before["chat"]
    assert (readyz["status"], readyz["checks"]["catalogue"]) == ("unavailable", "failed")
    assert readyz["details"]["catalogue"] == ("LiteLLM's model info is not read yet: models without prices in the "
                                              "config are refused")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "model_not_priced")
    ready(stack)
    assert httpx.get(f"{stack.gateway.url}/readyz").json()["checks"]["catalogue"] == "ok"
    assert chat(stack.member, "gpt-4o-mini").status_code == 200


def test_a_model_without_prices_is_charged_at_litellms_cost_map_price(stack: Stack) -> None:
    version = configure(stack)
    answer = chat(stack.member, "gpt-4o-mini", fake_chunks=50)
    assert answer.status_code == 200, answer.text
    expected = charge(cost_map("gpt-4o-mini"), 4, 50)  # 4 * 0.00000015 + 50 * 0.0000006 USD, markup 0.4: 43
    assert int(answer.headers["x-credits-charged"]) == expected == 43
    done = record(stack.member, answer.headers["x-request-id"])
    assert (done["charged_millicredits"], done["price_version"]) == (expected, version)
    (deployment,) = table(stack, version)["models"]["gpt-4o-mini"]
    assert {k: deployment[k] for k in ("input_cost_per_token", "output_cost_per_token", "source")} == {
        "input_cost_per_token": "0.00000015", "output_cost_per_token": "0.0000006",
        "source": {"input_cost_per_token": "litellm_model_info", "output_cost_per_token": "litellm_model_info"}}
    with stack.member.http() as http:
        # no mode in the config: LiteLLM's (embedding) decides which routes it serves
        words = ["a b c d e f g h i j " * 2] * 5
        embedded = http.post("/v1/embeddings", json={"model": "embed", "input": words})
        assert embedded.status_code == 200, embedded.text
        assert int(embedded.headers["x-credits-charged"]) == charge(cost_map("text-embedding-3-small"), 100, 0) == 3
        wrong = http.post("/v1/chat/completions", json={"model": "embed", "messages": MESSAGES})
        assert (wrong.status_code, wrong.json()["error"]["message"]) == (
            400, "The model 'embed' does not serve /chat/completions.")
        # no mode anywhere: every route its prices bound (input only on /embeddings)
        flat = http.post("/v1/embeddings", json={"model": "flat", "input": words})
        assert int(flat.headers["x-credits-charged"]) == charge(OLD, 100, 0) == 140
    refused = chat(stack.member, "mystery")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "model_not_priced")


def test_a_wildcard_route_prices_each_model_it_serves(stack: Stack) -> None:
    configure(stack)
    for model in ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"):
        answer = chat(stack.member, f"openai/{model}", fake_chunks=40)
        assert answer.status_code == 200, answer.text
        assert int(answer.headers["x-credits-charged"]) == charge(cost_map(model), 4, 40)
    assert charge(cost_map("gpt-4o-2024-08-06"), 4, 40) == 574  # (4 * 0.0000025 + 40 * 0.00001) * 1.4e6
    listed = {m["id"] for m in stack.member.get("/v1/models").json()["data"]}
    assert {"openai/gpt-4o-2024-08-06", "openai/gpt-4o-mini", "gpt-4o-mini", "flat", "embed"} <= listed
    assert "openai/gpt-4o-mini-tts" not in listed and "mystery" not in listed  # no billed route / no price
    speech = chat(stack.member, "openai/gpt-4o-mini-tts")
    assert (speech.status_code, speech.json()["error"]["message"]) == (
        400, "The model 'openai/gpt-4o-mini-tts' does not serve /chat/completions.")
    unknown = chat(stack.member, "openai/gpt-4o-next")  # the route serves it, nobody can price it
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (403, "model_not_priced")


def test_a_price_change_by_sighup_between_two_requests_charges_each_at_its_own_price(stack: Stack) -> None:
    old_version = configure(stack, OLD)
    first = chat(stack.member, "flat", fake_chunks=30)
    new_version = configure(stack, NEW, markup="0.5")
    second = chat(stack.member, "flat", fake_chunks=30)
    assert old_version != new_version
    assert int(first.headers["x-credits-charged"]) == charge(OLD, 4, 30) == 90
    assert int(second.headers["x-credits-charged"]) == charge(NEW, 4, 30, markup="0.5") == 243
    assert record(stack.member, first.headers["x-request-id"])["price_version"] == old_version
    assert record(stack.member, second.headers["x-request-id"])["price_version"] == new_version
    for version, (price_in, price_out), markup in ((old_version, OLD, "0.4"), (new_version, NEW, "0.5")):
        prices = table(stack, version)
        (flat,) = prices["models"]["flat"]
        assert (flat["input_cost_per_token"], flat["output_cost_per_token"], prices["tiers"]["starter"]["markup"]) == (
            price_in, price_out, markup)
    lines = [json.loads(line) for line in stack.gateway.svc.log.read_text().splitlines() if '"configuration ' in line]
    assert {"reason": "SIGHUP", "price_version": new_version, "previous_price_version": old_version} in [
        {k: line.get(k) for k in ("reason", "price_version", "previous_price_version")} for line in lines]


def test_a_stream_held_before_a_reload_settles_at_the_price_it_was_held_at(stack: Stack) -> None:
    old_version = configure(stack, OLD)
    body = {"model": "flat", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True},
            "fake_chunks": 10, "fake_delay_ms": 500}
    with stack.member.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as streamed:
        events = streamed.iter_lines()
        seen = [next(line for line in events if line.startswith("data:"))]  # held and answering
        stack.write(NEW)
        reload(stack)
        in_flight, swapped = serving_version(stack.gateway), time.monotonic()
        seen += [line for line in events if line.startswith("data:")]
        still_streaming = time.monotonic() - swapped  # the provider kept sending after the swap
    assert in_flight != old_version and still_streaming > 1.0
    chunks = [json.loads(line[5:]) for line in seen if line != "data: [DONE]"]
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) == 10
    assert chunks[-1]["usage"]["completion_tokens"] == 10
    done = record(stack.member, streamed.headers["x-request-id"])
    assert (done["charged_millicredits"], done["price_version"]) == (charge(OLD, 4, 10), old_version)
    assert done["held_millicredits"] == int(streamed.headers["x-credits-held"])
    after = chat(stack.member, "flat", fake_chunks=10)
    assert int(after.headers["x-credits-charged"]) == charge(NEW, 4, 10)
    assert record(stack.member, after.headers["x-request-id"])["price_version"] == in_flight


def test_a_bad_file_on_sighup_is_refused_and_the_old_prices_keep_serving(stack: Stack) -> None:
    version = configure(stack, OLD)
    stack.policy.write_text(POLICY.format(markup="-1").replace("models: [gpt-4o-mini, flat]",
                                                               "models: [gpt-4o-mini, flat, flta]"))
    log_size = stack.gateway.svc.log.stat().st_size
    reload(stack, outcome="failed")
    with stack.gateway.svc.log.open() as log:
        log.seek(log_size)
        refused = [json.loads(line)["msg"] for line in log if '"configuration refused' in line]
    assert refused == [f"configuration refused: {stack.policy}: tiers.starter.markup must be at least 0, got -1"]
    stack.models.write_text("model_list:\n  - model_name: [")
    reload(stack, outcome="failed")
    answer = chat(stack.member, "flat", fake_chunks=30)
    assert int(answer.headers["x-credits-charged"]) == charge(OLD, 4, 30)
    assert record(stack.member, answer.headers["x-request-id"])["price_version"] == version == serving_version(
        stack.gateway)
    stack.write(OLD)


def test_every_worker_reloads(stack: Stack) -> None:
    """With two workers the CLI passes SIGHUP on to each (uvicorn's own supervisor would restart them)."""
    old_version = configure(stack, OLD)
    svc = services.start_gateway(stack.gateway.env, workers=2)
    two = Gateway(svc, stack.gateway.env, stack.gateway.admin)
    try:
        until_sync(lambda: httpx.get(f"{svc.url}/readyz").status_code == 200, 60, "two workers ready")
        assert serving_version(two) == old_version
        stack.write(NEW)
        os.kill(svc.proc.pid, signal.SIGHUP)  # the CLI's process: uvicorn's supervisor

        def everywhere() -> bool:  # livemax over the workers: the old version is 0 only once none serves it
            return metric(two, "creditgate_price_version", f'{{version="{old_version}"}}') == 0.0
        until_sync(everywhere, 20, "every worker reloaded")
        new_version = serving_version(two)
        member = Member(stack.member.org_id, stack.member.user_id, stack.member.key_id, stack.member.key, two)
        answers = [chat(member, "flat", fake_chunks=20) for _ in range(6)]
        assert {int(a.headers["x-credits-charged"]) for a in answers} == {charge(NEW, 4, 20)}
        assert {record(member, a.headers["x-request-id"])["price_version"] for a in answers} == {new_version}
        assert svc.alive()  # reloaded, not restarted
    finally:
        svc.stop()
        reload(stack)  # the first gateway reads the files as they are now
