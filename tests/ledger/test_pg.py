"""The ledger's operations against the real PostgreSQL, with exact integers."""

from __future__ import annotations

import asyncpg
import pytest

from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import add_member, add_org, hold, pool_state, usage, violations

ORG, U1, U2 = "org_a", "usr_1", "usr_2"


@pytest.fixture
async def org(db: asyncpg.Connection, ledger: PgLedger) -> PgLedger:
    await add_org(db, ORG)
    await add_member(db, ORG, U1)
    await add_member(db, ORG, U2, limit=500)
    await ledger.grant(ORG, 1000, "seed", "g1", None, "operator")
    return ledger


async def test_reserve_settle_under_and_over(org: PgLedger, db: asyncpg.Connection) -> None:
    assert (await org.reserve(hold(ORG, U1, "r1", 300))).amount == 300
    assert await pool_state(db, ORG) == (1000, 0, 300, 0)
    res = await org.settle(ORG, "r1", usage(120))
    assert (res.status, res.charged, res.remaining) == ("posted", 120, 880)
    await org.reserve(hold(ORG, U1, "r2", 100))
    res = await org.settle(ORG, "r2", usage(150))  # 50 beyond the hold: overage
    assert (res.status, res.charged, res.remaining) == ("posted", 150, 730)
    assert await pool_state(db, ORG) == (1000, 220, 0, 50)
    again = await org.settle(ORG, "r2", usage(150))
    assert (again.status, again.charged) == ("already_settled", 150)
    with pytest.raises(ProxyError) as exc:
        await org.settle(ORG, "r2", usage(151))
    assert (exc.value.status, exc.value.code) == (409, "request_id_in_use")
    assert await org.credits(ORG, U1) == {
        "org_id": ORG, "pool": {"balance": 730, "held": 0, "available": 730},
        "allocation": {"limit": None, "used": 270, "held": 0, "available": 730, "period": "none", "resets_at": None},
        "key": None}  # no key named: tests/ledger/test_key_limits.py has a key's own bound
    assert await violations(db) == []


async def test_refusals(org: PgLedger, db: asyncpg.Connection) -> None:
    await org.reserve(hold(ORG, U1, "r1", 10))
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold(ORG, U1, "r1", 10))
    assert (exc.value.status, exc.value.code, exc.value.headers) == (409, "request_id_in_use",
                                                                     {"x-should-retry": "false"})
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold(ORG, U1, "r2", 991))
    assert (exc.value.status, exc.value.code) == (402, "org_pool_exhausted")
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold(ORG, U2, "r3", 501))
    assert (exc.value.status, exc.value.code) == (402, "user_allocation_exhausted")
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold(ORG, "usr_nobody", "r4", 1))
    assert (exc.value.status, exc.value.code) == (403, "not_a_member")
    await db.execute("UPDATE creditgate.orgs SET suspended = true WHERE id = $1", ORG)
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold(ORG, U1, "r5", 1))
    assert (exc.value.status, exc.value.code) == (403, "suspended")
    await db.execute("UPDATE creditgate.orgs SET suspended = false WHERE id = $1", ORG)
    await db.execute("UPDATE creditgate.memberships SET suspended = true WHERE user_id = $1", U2)
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold(ORG, U2, "r6", 1))
    assert (exc.value.status, exc.value.code) == (403, "suspended")
    assert await pool_state(db, ORG) == (1000, 0, 10, 0)
    assert await violations(db) == []


async def test_void_releases_and_id_may_be_reused(org: PgLedger, db: asyncpg.Connection) -> None:
    await org.reserve(hold(ORG, U2, "r1", 400))
    await org.void(ORG, "r1")
    await org.void(ORG, "r1")  # idempotent
    assert await pool_state(db, ORG) == (1000, 0, 0, 0)
    assert await org.request(ORG, "r1") == {
        "request_id": "r1", "status": "voided", "model": "fake-small", "prompt_tokens": 10,
        "completion_tokens": None, "held_millicredits": 400, "charged_millicredits": None,
        "list_price_millicredits": None, "usage_source": None, "byok": False, "user_id": U2, "price_version": None}
    await org.reserve(hold(ORG, U2, "r1", 450))  # a voided id may be reused
    await org.settle(ORG, "r1", usage(30))
    await org.void(ORG, "r1")  # never voids a posted hold
    assert await pool_state(db, ORG) == (1000, 30, 0, 0)
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold(ORG, U2, "r1", 1))
    assert exc.value.code == "request_id_in_use"
    row = await org.request(ORG, "r1")
    assert row is not None and (row["status"], row["charged_millicredits"]) == ("settled", 30)
    assert await violations(db) == []


async def test_settle_unknown_request(org: PgLedger) -> None:
    with pytest.raises(ProxyError) as exc:
        await org.settle(ORG, "nope", usage(1))
    assert (exc.value.status, exc.value.code) == (404, "request_not_found")


async def test_unbatched_mode_gives_the_same_answers(ledger_db: str, db: asyncpg.Connection) -> None:
    lg = await PgLedger.connect(ledger_db, hold_ttl_seconds=60, batching=False)
    try:
        await add_org(db, ORG)
        await add_member(db, ORG, U1)
        await lg.grant(ORG, 100, "seed", "g1", None, "operator")
        await lg.reserve(hold(ORG, U1, "r1", 60))
        with pytest.raises(ProxyError) as exc:
            await lg.reserve(hold(ORG, U1, "r2", 41))
        assert exc.value.code == "org_pool_exhausted"
        res = await lg.settle(ORG, "r1", usage(61))
        assert (res.status, res.charged, res.remaining) == ("posted", 61, 39)
    finally:
        await lg.close()
    assert await violations(db) == []


async def test_unreachable_database_is_ledger_unavailable() -> None:
    lg = PgLedger(await _dead_pool(), hold_ttl_seconds=60)
    with pytest.raises(ProxyError) as exc:
        await lg.reserve(hold(ORG, U1, "r1", 1))
    assert (exc.value.status, exc.value.code) == (503, "ledger_unavailable")
    with pytest.raises(ProxyError) as exc:
        await lg.settle(ORG, "r1", usage(1))
    assert exc.value.code == "ledger_unavailable"
    await lg.close()


async def _dead_pool() -> asyncpg.Pool:
    from devstack.services import free_port

    pool = asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/x", min_size=0, max_size=2)
    return await pool  # min_size=0: nothing connects until first use


async def test_the_void_of_an_abandoned_reserve_goes_to_the_spool_when_postgresql_cannot_take_it(
        ledger: PgLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reserve whose answer was lost (ledger_unavailable, the hold maybe committed) is voided blind; when that
    void fails too it is handed to `on_lost_void` (the app's spool) rather than left for the sweeper to charge
    a request that was answered 503 (found by `make chaos` while PostgreSQL restarted)."""
    lost: list[tuple[str, str]] = []

    async def spool(org_id: str, request_id: str) -> None:
        lost.append((org_id, request_id))

    async def down(*args: object, **kwargs: object) -> object:
        raise ProxyError.ledger_unavailable()

    monkeypatch.setattr(ledger, "_call", down)
    await ledger._void_quietly("org_l", "r1", "owner")  # noqa: SLF001 - the background path under test
    assert lost == []  # no hook: left to the sweeper, as before
    hooked = PgLedger(ledger.db, hold_ttl_seconds=120, on_lost_void=spool)
    monkeypatch.setattr(hooked, "_call", down)
    await hooked._void_quietly("org_l", "r1", "owner")  # noqa: SLF001
    assert lost == [("org_l", "r1")]
