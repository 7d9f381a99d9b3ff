"""OwnResponses with an in-memory owner table: previous_response_id only for the caller's own responses,
and every served response recorded for its caller once the request's cleanup runs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policies.model import RewriteModel
from policies.responses import OwnResponses
from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from tests.policies.policy_support import make_ctx, member


class Owners:
    def __init__(self, fail: bool = False) -> None:
        self.rows: set[tuple[str, str, str]] = set()
        self.fail = fail

    async def remember(self, org_id: str, user_id: str, request_id: str, response_id: str) -> None:
        if self.fail:
            raise OSError("database down")
        self.rows.add((org_id, user_id, response_id))

    async def owned(self, org_id: str, user_id: str, response_id: str) -> bool:
        return (org_id, user_id, response_id) in self.rows

    async def forget(self, org_id: str, user_id: str, response_id: str) -> None:
        self.rows.discard((org_id, user_id, response_id))


async def test_a_served_response_is_recorded_for_its_caller_after_the_answer() -> None:
    owners = Owners()
    ctx = make_ctx({"model": "m", "input": "x"}, route="responses")
    ctx.membership = member("org_a", user_id="usr_1")
    async with ctx.cleanup:
        await OwnResponses(owners)(ctx)
        ctx.upstream_status, ctx.response_id = 200, "resp_1"
        assert owners.rows == set()
    assert owners.rows == {("org_a", "usr_1", "resp_1")}


@pytest.mark.parametrize(("status", "rid"), [(200, None), (400, "resp_1"), (None, None)])
async def test_nothing_is_recorded_when_nothing_was_served(status: int | None, rid: str | None) -> None:
    owners = Owners()
    ctx = make_ctx({"model": "m", "input": "x"}, route="responses")
    ctx.membership = member()
    async with ctx.cleanup:
        await OwnResponses(owners)(ctx)
        ctx.upstream_status, ctx.response_id = status, rid
    assert owners.rows == set()


async def test_a_failed_record_never_fails_the_request() -> None:
    ctx = make_ctx({"model": "m", "input": "x"}, route="responses")
    ctx.membership = member()
    async with ctx.cleanup:
        await OwnResponses(Owners(fail=True))(ctx)
        ctx.upstream_status, ctx.response_id = 200, "resp_1"


async def test_previous_response_id_must_be_the_callers_own() -> None:
    owners = Owners()
    owners.rows.add(("org_a", "usr_1", "resp_mine"))
    for who, rid in ((member("org_a", user_id="usr_2"), "resp_mine"), (member("org_b", user_id="usr_1"), "resp_mine"),
                     (member("org_a", user_id="usr_1"), "resp_other")):
        ctx = make_ctx({"model": "m", "input": "x", "previous_response_id": rid}, route="responses")
        ctx.membership = who
        with pytest.raises(ProxyError) as err:
            await OwnResponses(owners)(ctx)
        assert (err.value.status, err.value.code, err.value.param) == (400, "invalid_value", "previous_response_id")
    ctx = make_ctx({"model": "m", "input": "x", "previous_response_id": "resp_mine"}, route="responses")
    ctx.membership = member("org_a", user_id="usr_1")
    await OwnResponses(owners)(ctx)


async def test_other_routes_pass_untouched() -> None:
    ctx = make_ctx({"model": "m", "messages": [], "previous_response_id": "x"})
    ctx.membership = member()
    await OwnResponses(Owners())(ctx)
    assert len(ctx.cleanup._exit_callbacks) == 0  # type: ignore[attr-defined]


# RewriteModel on /responses: the output cap and the bound of a continued conversation
async def test_max_output_tokens_is_injected_or_clamped_by_the_power_level(
        policy: PolicyConfig, catalogue: Catalogue) -> None:
    for sent, expected in ((None, 2000), (10**6, 2000), (7, 7)):
        body = {"model": "fake-small", "input": "x", **({"max_output_tokens": sent} if sent else {})}
        ctx = make_ctx(body, route="responses", x_power_level="eco")
        ctx.membership = member()
        await RewriteModel(policy, catalogue)(ctx)
        assert ctx.body["max_output_tokens"] == expected and "max_tokens" not in ctx.body
        assert ctx.prompt_floor == 0


async def test_previous_response_id_is_bounded_by_the_largest_context_window_or_refused(
        policy: PolicyConfig, catalogue: Catalogue) -> None:
    body = {"model": "fake-multi", "input": "x", "previous_response_id": "resp_1"}
    ctx = make_ctx(body, route="responses", x_power_level="balanced")
    ctx.membership = member()
    with pytest.raises(ProxyError) as err:
        await RewriteModel(policy, catalogue)(ctx)  # the shipped config says no window
    assert (err.value.code, err.value.param) == ("invalid_value", "previous_response_id")
    multi = catalogue.models["fake-multi"]
    windows = (multi.deployments[0], replace(multi.deployments[1], max_input_tokens=64_000))
    half = replace(catalogue, models={**catalogue.models, "fake-multi": replace(multi, deployments=windows)})
    with pytest.raises(ProxyError):  # one deployment without a window is enough to refuse
        await RewriteModel(policy, half)(make_member_ctx(body))
    both = (replace(multi.deployments[0], max_input_tokens=128_000), windows[1])
    known = replace(catalogue, models={**catalogue.models, "fake-multi": replace(multi, deployments=both)})
    ctx = make_member_ctx(body)
    await RewriteModel(policy, known)(ctx)
    assert ctx.prompt_floor == 128_000


def make_member_ctx(body: dict[str, object]) -> RequestContext:
    ctx = make_ctx(dict(body), route="responses", x_power_level="balanced")
    ctx.membership = member()
    return ctx
