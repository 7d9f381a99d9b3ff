"""GET /models, /models/{id}, /models/categorized: the shipped model list filtered by the org's tier
and the caller's usable BYOK keys (their own or the org's, enabled)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.caller.models import usable
from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig

from .conftest import CREATED, Caller, answer, error
from .fakes import member

PLATFORM = ["mock-gpt", "fake-small", "fake-medium", "fake-large", "fake-gpt-4o-mini", "fake-multi", "fake-embed",
            "fake-image"]
FREE = ["mock-gpt", "fake-small", "fake-gpt-4o-mini", "fake-embed"]


# the shipped policy.yaml's power levels, by the models they list
LEVELS = {"fake-small": ["eco"], "mock-gpt": ["eco"], "fake-medium": ["balanced"], "fake-gpt-4o-mini": ["balanced"],
          "fake-multi": ["balanced"], "fake-large": ["precision"], "byok-gpt": ["precision"],
          "byok-only": ["precision"]}


def obj(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "openai",
            "power_levels": LEVELS.get(name, [])}


def listing(names: list[str]) -> tuple[int, dict[str, Any]]:
    return 200, {"object": "list", "data": [obj(n) for n in names]}


async def put_key(caller: Caller, who: str, scope: str = "user", enabled: bool = True) -> None:
    response = await caller.post("/v1/byok/keys", who, json={"provider": "openai", "api_key": "sk-own-key-0001",
                                                             "scope": scope})
    assert response.status_code == 201
    if not enabled:
        toggled = await caller.post(f"/v1/byok/keys/openai/toggle?scope={scope}", who, json={"enabled": False})
        assert toggled.status_code == 200


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1/llm"])
async def test_without_a_key_only_priced_platform_models_are_listed(caller: Caller, prefix: str) -> None:
    # byok-gpt is priced and only optionally BYOK; byok-only needs a key; unpriced-model has no price
    expected = ["mock-gpt", "fake-small", "fake-medium", "fake-large", "fake-gpt-4o-mini", "fake-multi", "byok-gpt",
                "fake-embed", "fake-image"]
    assert answer(await caller.get(f"{prefix}/models")) == listing(expected)


async def test_a_usable_key_adds_the_byok_models(caller: Caller) -> None:
    await put_key(caller, "alice")
    everything = ["mock-gpt", "fake-small", "fake-medium", "fake-large", "fake-gpt-4o-mini", "fake-multi",
                  "byok-gpt", "byok-only", "fake-embed", "fake-image", "unpriced-model"]
    assert answer(await caller.get("/v1/models")) == listing(everything)
    # bob, in the same org, has no key of his own and no org key
    assert "byok-only" not in [m["id"] for m in (await caller.get("/v1/models", "bob")).json()["data"]]


async def test_the_orgs_key_counts_for_every_member_and_a_disabled_key_for_none(caller: Caller) -> None:
    await put_key(caller, "root", scope="org")
    ids = [m["id"] for m in (await caller.get("/v1/models", "bob")).json()["data"]]
    assert ("byok-only" in ids, "unpriced-model" in ids) == (True, True)
    await caller.post("/v1/byok/keys/openai/toggle?scope=org", "root", json={"enabled": False})
    ids = [m["id"] for m in (await caller.get("/v1/models", "bob")).json()["data"]]
    assert ("byok-only" in ids, "unpriced-model" in ids) == (False, False)


async def test_the_free_tier_sees_only_its_models(caller: Caller) -> None:
    assert answer(await caller.get("/v1/models", "frank")) == listing(FREE)


async def test_categorized_splits_platform_and_byok_models(caller: Caller) -> None:
    assert answer(await caller.get("/v1/models/categorized")) == (200, {
        "platform": [obj(n) for n in PLATFORM], "byok": [obj("byok-gpt")]})
    await put_key(caller, "alice")
    assert answer(await caller.get("/api/v1/llm/models/categorized")) == (200, {
        "platform": [obj(n) for n in PLATFORM], "byok": [obj(n) for n in ("byok-gpt", "byok-only", "unpriced-model")]})
    assert answer(await caller.get("/v1/models/categorized", "frank")) == (200, {
        "platform": [obj(n) for n in FREE], "byok": []})


def model_not_found(name: str) -> tuple[int, dict[str, Any]]:
    return error(404, "not_found_error", "model_not_found",
                 f"The model '{name}' does not exist or is not available to you.")


async def test_one_model_only_when_the_caller_may_use_it(caller: Caller) -> None:
    assert answer(await caller.get("/v1/models/fake-large")) == (200, obj("fake-large"))
    assert answer(await caller.get("/api/v1/llm/models/fake-large", "frank")) == model_not_found("fake-large")
    assert answer(await caller.get("/v1/models/byok-only")) == model_not_found("byok-only")
    await put_key(caller, "alice")
    assert answer(await caller.get("/v1/models/byok-only")) == (200, obj("byok-only"))
    assert answer(await caller.get("/v1/models/no-such-model")) == model_not_found("no-such-model")
    assert answer(await caller.get("/v1/models/openai/gpt-4o")) == model_not_found("openai/gpt-4o")


async def test_models_need_a_valid_key(caller: Caller) -> None:
    for path in ("/v1/models", "/v1/models/categorized", "/v1/models/mock-gpt"):
        response = await caller.http.get(path)
        assert answer(response) == error(401, "authentication_error", "invalid_api_key", "Invalid API key.")


def test_an_org_on_a_tier_the_policy_file_does_not_know_may_use_nothing(catalogue: Catalogue,
                                                                        policy: PolicyConfig) -> None:
    known, unknown = member("org_x", "usr_x", tier="starter"), member("org_x", "usr_x", tier="platinum")
    model = catalogue.models["fake-small"]
    assert (usable(model, known, set(), policy), usable(model, unknown, {"openai"}, policy)) == (True, False)
