"""tests/fakes.py keeps to the protocols it stands in for: the hot path's Ledger and the APIs' LedgerAdmin."""

from __future__ import annotations

import inspect
from decimal import Decimal

import pytest

from proxy.api.stores import LedgerAdmin
from proxy.errors import ProxyError
from proxy.ledger.types import Hold, HoldRequest, Ledger, Settlement
from tests.fakes import FakeLedger

# checked by mypy (`mypy tests/fakes.py tests/test_fakes.py`): the fake is assignable to both protocols
_hot_path: Ledger = FakeLedger()
_admin: LedgerAdmin = FakeLedger()


def hold(request_id: str, amount: int = 90) -> HoldRequest:
    rate = Decimal("0.05")
    return HoldRequest("org_a", "usr_1", "key_1", request_id, amount, "fake-small", False, 11, rate, rate, rate, rate)


SETTLEMENT = Settlement(11, 6, 4, 2, "provider", "fake-small", "openai", None)


@pytest.mark.parametrize("protocol", [Ledger, LedgerAdmin])
def test_every_method_of_the_protocol_with_its_signature(protocol: type) -> None:
    names = [n for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert names
    for name in names:
        fake = getattr(FakeLedger, name)
        assert inspect.iscoroutinefunction(fake), name
        expected = [(p.name, p.kind) for p in inspect.signature(getattr(protocol, name)).parameters.values()]
        assert [(p.name, p.kind) for p in inspect.signature(fake).parameters.values()] == expected, name


async def test_reserve_then_settle_or_void_is_recorded() -> None:
    ledger = FakeLedger()
    assert await ledger.reserve(hold("r1")) == Hold("org_a", "r1", 90)
    await ledger.reserve(hold("r2", 40))
    result = await ledger.settle("org_a", "r1", SETTLEMENT)
    assert (result.status, result.charged, result.remaining) == ("posted", 4, 123_456)
    await ledger.checkpoint("org_a", "r2", 7)
    await ledger.void("org_a", "r2")
    assert [h.request_id for h in ledger.holds] == ["r1", "r2"]
    assert ledger.settled == [("org_a", "r1", SETTLEMENT)]
    assert ledger.checkpoints == [("org_a", "r2", 7)]
    assert ledger.voided == [("org_a", "r2")]
    assert ledger.calls == []  # the hot path is not a LedgerAdmin call


async def test_the_hot_path_knobs() -> None:
    ledger = FakeLedger(remaining=None, unavailable=2)
    for _ in range(2):
        with pytest.raises(ProxyError) as unavailable:
            await ledger.void("org_a", "r1")
        assert (unavailable.value.status, unavailable.value.code) == (503, "ledger_unavailable")
    assert (await ledger.settle("org_a", "r1", SETTLEMENT)).remaining is None
    ledger.reserve_error = ProxyError(402, "insufficient_quota", "insufficient_credits", "No credit.")
    with pytest.raises(ProxyError):
        await ledger.reserve(hold("r3"))
    assert ledger.holds == [] and ledger.voided == []


async def test_grants_and_adjustments_post_to_the_journal_and_move_the_balance() -> None:
    ledger = FakeLedger()
    granted = await ledger.grant("org_a", 500, "welcome", "g-1", None, "operator")
    assert granted["pool"] == {"balance": 500, "held": 0, "available": 500, "overage": 0, "granted": 500}
    refund = await ledger.adjust("org_a", 100, "refund", "a-1", "operator")
    assert refund["pool"]["balance"] == 600
    with pytest.raises(ProxyError) as exceeds:
        await ledger.adjust("org_a", -601, "too much", "a-2", "operator")
    assert exceeds.value.code == "adjustment_exceeds_available"
    await ledger.grant("org_b", 7, "other org", "g-1", None, "operator")
    assert await ledger.pool("org_a") == {"balance": 600, "held": 0, "available": 600, "overage": 0, "granted": 500}
    rows, has_more = await ledger.entries("org_a", user_id=None, limit=1, after=None)
    assert ([r["kind"] for r in rows], has_more) == (["adjustment"], True)
    rows, has_more = await ledger.entries("org_a", user_id=None, limit=5, after=rows[0]["id"])
    assert ([r["amount_millicredits"] for r in rows], has_more) == ([500], False)
    assert [name for name, _ in ledger.calls] == ["grant", "adjust", "adjust", "grant", "pool", "entries", "entries"]


async def test_a_grant_is_idempotent_by_org_and_key() -> None:
    ledger = FakeLedger()
    first = await ledger.grant("org_a", 500, "welcome", "g-1", None, "operator")
    again = await ledger.grant("org_a", 500, "welcome", "g-1", None, "operator")
    assert again == first
    assert len(ledger.entries_rows) == 1 and ledger.balance == {"org_a": 500} and ledger.granted == {"org_a": 500}
    with pytest.raises(ProxyError) as reused:
        await ledger.grant("org_a", 501, "welcome", "g-1", None, "operator")
    assert (reused.value.status, reused.value.code) == (409, "idempotency_key_reused")


async def test_canned_rows_are_configurable() -> None:
    default = FakeLedger()
    [row] = await default.usage("org_a", group_by="day", user_id=None, start=None, end=None)
    assert row["day"] == "fake-small" and "group" not in row
    assert (await default.credits("org_a", "usr_1"))["org_id"] == "org_a"
    assert await default.request("org_a", "r1") is None

    ledger = FakeLedger(usage_rows=[{"group": "x", "requests": 1}], credits_row={"pool": {}},
                        provider_usage_row={"requests": 9},
                        requests={("org_a", "r1"): {"request_id": "r1", "user_id": "usr_1"}},
                        entries_rows=[{"id": "3", "user_id": "usr_1"}, {"id": "2", "user_id": "usr_2"},
                                      {"id": "1", "user_id": "usr_1", "org_id": "org_b"}])
    assert await ledger.usage("org_a", group_by="user", user_id=None, start=None, end=None) == [
        {"user": "x", "requests": 1}]
    assert await ledger.credits("org_a", "usr_1") == {"org_id": "org_a", "pool": {}}
    assert await ledger.provider_usage("org_a", None, "openai") == {"requests": 9}
    assert await ledger.request("org_a", "r1") == {"request_id": "r1", "user_id": "usr_1"}
    # a canned row without "org_id" is in every org; one with it only in its own
    assert await ledger.entries("org_a", user_id="usr_1", limit=5, after=None) == ([{"id": "3", "user_id": "usr_1"}],
                                                                                    False)
    assert [r["id"] for r in (await ledger.entries("org_b", user_id=None, limit=5, after=None))[0]] == ["3", "2", "1"]
    # two fakes never share a canned row
    default.credits_row["pool"]["balance"] = 0
    assert (await FakeLedger().credits("org_a", "usr_1"))["pool"]["balance"] == 1000
