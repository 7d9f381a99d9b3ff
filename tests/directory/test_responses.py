"""PgResponseOwners on a fresh migrated PostgreSQL: an id is reachable only by the member it was recorded for."""

from __future__ import annotations

import asyncpg
import pytest

from proxy.directory.pg import PgDirectory
from proxy.directory.responses import PgResponseOwners
from proxy.errors import ProxyError


async def two_members(directory: PgDirectory) -> tuple[str, str, str, str]:
    org = (await directory.create_org("Org", "starter", "operator"))["id"]
    other_org = (await directory.create_org("Other", "starter", "operator"))["id"]
    alice = (await directory.create_user("alice@example.com", "Alice", "operator"))["id"]
    bob = (await directory.create_user("bob@example.com", "Bob", "operator"))["id"]
    return org, other_org, alice, bob


async def test_only_the_recorded_member_in_the_recorded_org_owns_an_id(pool: asyncpg.Pool,
                                                                       directory: PgDirectory) -> None:
    org, other_org, alice, bob = await two_members(directory)
    owners = PgResponseOwners(pool)
    await owners.remember(org, alice, "req_1", "resp_a")
    await owners.remember(org, bob, "req_2", "resp_a")  # an id already owned stays its first owner's
    assert await owners.owned(org, alice, "resp_a")
    assert not await owners.owned(org, bob, "resp_a")
    assert not await owners.owned(other_org, alice, "resp_a")
    assert not await owners.owned(org, alice, "resp_b")
    assert not await owners.owned(org, alice, "")
    assert not await owners.owned(org, alice, "x" * 1025)
    assert not await owners.owned(org, alice, "resp_\x00")
    await owners.forget(org, bob, "resp_a")  # not bob's: nothing changes
    assert await owners.owned(org, alice, "resp_a")
    await owners.forget(org, alice, "resp_a")
    assert not await owners.owned(org, alice, "resp_a")
    await owners.remember(org, alice, "req_3", "resp_a")  # a deleted id is not recorded again
    assert not await owners.owned(org, alice, "resp_a")


async def test_an_unreachable_database_is_ledger_unavailable() -> None:
    class Closed:
        def acquire(self, *, timeout: float | None = None) -> object:
            raise OSError("connection refused")

    with pytest.raises(ProxyError) as err:
        await PgResponseOwners(Closed()).owned("org_a", "usr_a", "resp_1")  # type: ignore[arg-type]
    assert (err.value.status, err.value.code) == (503, "ledger_unavailable")
