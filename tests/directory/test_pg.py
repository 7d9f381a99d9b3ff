"""PgDirectory on the real PostgreSQL: the hot path's reads, BYOK key storage, concurrency, errors."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from proxy.directory.apikeys import hash_key
from proxy.directory.pg import PgDirectory
from proxy.directory.types import ApiKey, KeyScope, Membership, StoredProviderKey
from proxy.errors import ProxyError


async def seed(directory: PgDirectory) -> tuple[str, str, str]:
    org = (await directory.create_org("Acme", "professional", "operator"))["id"]
    other = (await directory.create_org("Other", "free", "operator"))["id"]
    user = (await directory.create_user("ann@acme.test", "Ann", "operator"))["id"]
    return org, other, user


async def test_api_key_by_hash_including_revoked(directory: PgDirectory) -> None:
    org, _, user = await seed(directory)
    await directory.put_member(org, user, {}, "operator")
    created = await directory.create_key(user, org, "k", "operator")
    assert await directory.api_key(hash_key(created["key"])) == ApiKey(created["id"], user, org, False)
    assert await directory.revoke_key(created["id"], "operator") == hash_key(created["key"])
    assert await directory.api_key(hash_key(created["key"])) == ApiKey(created["id"], user, org, True)
    assert await directory.api_key(hash_key("sk-cg-unknown")) is None
    assert await directory.revoke_key("key_unknown", "operator") is None


async def test_a_scoped_key_is_stored_changed_audited_and_read_by_the_hot_path(directory: PgDirectory) -> None:
    org, _, user = await seed(directory)
    await directory.put_member(org, user, {}, "operator")
    scope = KeyScope(("fake-small",), ("/v1/chat/completions",), True, 5_000, "day")
    created = await directory.create_key(user, org, "k", "operator", scope)
    assert {k: created[k] for k in ("models", "routes", "read_only", "limit_millicredits", "limit_period")} == {
        "models": ("fake-small",), "routes": ("/v1/chat/completions",), "read_only": True,
        "limit_millicredits": 5_000, "limit_period": "day"}
    assert created["usage"] == {"limit": 5_000, "used": 0, "held": 0, "available": 5_000, "period": "day",
                                "resets_at": created["usage"]["resets_at"]}
    key_hash = hash_key(created["key"])
    assert await directory.api_key(key_hash) == ApiKey(created["id"], user, org, False, ("fake-small",),
                                                       ("/v1/chat/completions",), True)
    changes = {"models": None, "read_only": False, "limit_millicredits": None}
    assert await directory.update_key(created["id"], changes, "operator") == key_hash
    assert await directory.api_key(key_hash) == ApiKey(created["id"], user, org, False, None,
                                                       ("/v1/chat/completions",), False)
    row = await directory.get_key(created["id"])
    assert row is not None and (row["limit_millicredits"], row["usage"]["available"]) == (None, None)
    audit, _ = await directory.list_audit(org, 10, None)
    assert (audit[0]["action"], audit[0]["detail"]) == ("key.update", changes)
    assert await directory.update_key("key_unknown", {"read_only": True}, "operator") is None


async def test_a_spend_limit_needs_a_key_bound_to_an_org(directory: PgDirectory) -> None:
    org, _, user = await seed(directory)
    with pytest.raises(ProxyError) as exc:
        await directory.create_key(user, None, "k", "operator", KeyScope(limit_millicredits=1))
    assert (exc.value.code, exc.value.param) == ("invalid_value", "org_id")
    unbound = await directory.create_key(user, None, "k", "operator")
    with pytest.raises(ProxyError) as exc:
        await directory.update_key(unbound["id"], {"limit_millicredits": 1}, "operator")
    assert (exc.value.code, exc.value.param) == ("invalid_value", "limit_millicredits")


async def test_memberships_carry_org_tier_and_suspension_default_first(directory: PgDirectory) -> None:
    org, other, user = await seed(directory)
    await directory.put_member(org, user, {"role": "admin", "power_level": "eco"}, "operator")
    await directory.put_member(other, user, {"default": True, "suspended": True}, "operator")
    await directory.update_org(org, {"suspended": True}, "operator")
    assert list(await directory.memberships(user)) == [
        Membership(other, user, "member", True, None, True, "free", False),
        Membership(org, user, "admin", False, "eco", False, "professional", True),
    ]
    assert list(await directory.memberships("usr_nobody")) == []


async def test_provider_keys_member_first_then_org(directory: PgDirectory) -> None:
    org, other, user = await seed(directory)
    await directory.put_member(org, user, {}, "operator")
    await directory.put_provider_key(org, "org", org, "openai", b"org-cipher", "1111")
    await directory.put_provider_key(org, "user", user, "openai", b"user-cipher", "2222")
    await directory.put_provider_key(org, "user", "usr_someone_else", "openai", b"theirs", "3333")
    await directory.put_provider_key(other, "org", other, "openai", b"other-org", "4444")
    await directory.put_provider_key(org, "org", org, "anthropic", b"anthropic", "5555")
    assert list(await directory.provider_keys(org, user, "openai")) == [
        StoredProviderKey("openai", "user", b"user-cipher", True),
        StoredProviderKey("openai", "org", b"org-cipher", True),
    ]
    toggled = await directory.toggle_provider_key(org, "user", user, "openai", False)
    assert toggled is not None and (toggled["enabled"], toggled["last4"]) == (False, "2222")
    assert [k.enabled for k in await directory.provider_keys(org, user, "openai")] == [False, True]
    replaced = await directory.put_provider_key(org, "user", user, "openai", b"new-cipher", "6666")
    assert (replaced["enabled"], replaced["last4"]) == (True, "6666")
    listed = await directory.list_provider_keys(org, user)
    assert [(r["provider"], r["scope"], r["last4"]) for r in listed] == [
        ("anthropic", "org", "5555"), ("openai", "user", "6666"), ("openai", "org", "1111"),
    ]
    assert all("ciphertext" not in r for r in listed)
    assert await directory.delete_provider_key(org, "user", user, "openai") is True
    assert await directory.delete_provider_key(org, "user", user, "openai") is False
    assert await directory.toggle_provider_key(org, "user", user, "openai", True) is None
    with pytest.raises(ProxyError) as missing:
        await directory.put_provider_key("org_missing", "org", "org_missing", "openai", b"x", "1234")
    assert (missing.value.status, missing.value.code) == (404, "org_not_found")


async def test_concurrent_default_changes_leave_exactly_one_default(directory: PgDirectory) -> None:
    user = (await directory.create_user("ann@acme.test", "Ann", "operator"))["id"]
    orgs = [(await directory.create_org(f"Org {i}", "free", "operator"))["id"] for i in range(8)]
    for org in orgs:
        await directory.put_member(org, user, {}, "operator")
    for _ in range(3):
        await asyncio.gather(*(directory.put_member(org, user, {"default": True}, "operator") for org in orgs))
        assert sum(m.is_default for m in await directory.memberships(user)) == 1


async def test_unreachable_database_is_ledger_unavailable(fresh_db: str) -> None:
    pool = await asyncpg.create_pool(fresh_db, min_size=0, max_size=1)
    assert pool is not None
    await pool.close()
    with pytest.raises(ProxyError) as closed:
        await PgDirectory(pool).api_key("0" * 64)
    assert (closed.value.status, closed.value.code) == (503, "ledger_unavailable")


async def test_org_name_too_long_for_the_schema_is_invalid_value(directory: PgDirectory) -> None:
    with pytest.raises(ProxyError) as too_long:
        await directory.create_org("x" * 201, "free", "operator")
    assert (too_long.value.status, too_long.value.code) == (400, "invalid_value")
