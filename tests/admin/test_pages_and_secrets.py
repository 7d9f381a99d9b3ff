"""Listings page with limit/after/has_more; keys and the admin token never show again."""

from __future__ import annotations

from typing import Any

from proxy.directory.apikeys import hash_key

from .conftest import TOKEN, Admin


async def walk(admin: Admin, path: str, limit: int, **params: str) -> tuple[list[str], int]:
    """Every id of a listing, following `after`; and how many pages it took."""
    ids: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": limit, **params} | ({"after": after} if after else {})
        page = await admin.ok("GET", path, **query)
        assert len(page["data"]) <= limit
        ids += [row["id"] for row in page["data"]]
        pages += 1
        if not page["has_more"]:
            return ids, pages
        after = page["data"][-1]["id"]


async def test_orgs_users_and_keys_page_over_more_rows_than_a_page(admin: Admin) -> None:
    orgs = [await admin.org(f"Org {i}") for i in range(7)]
    users = [await admin.user(f"u{i}@acme.test") for i in range(7)]
    for user in users:
        await admin.member(orgs[0], user)
    keys = [(await admin.key(user, orgs[0]))[0] for user in users]
    assert await walk(admin, "/admin/orgs", 3) == (sorted(orgs), 3)
    assert await walk(admin, "/admin/users", 2) == (sorted(users), 4)
    assert await walk(admin, "/admin/keys", 7, org_id=orgs[0]) == (sorted(keys), 1)
    assert await walk(admin, "/admin/keys", 4) == (sorted(keys), 2)
    default = await admin.ok("GET", "/admin/orgs")
    assert (len(default["data"]), default["has_more"]) == (7, False)


async def test_default_page_is_50_and_max_is_500(admin: Admin) -> None:
    async with admin.pool.acquire() as conn:
        await conn.executemany("INSERT INTO creditgate.orgs (id, name, tier) VALUES ($1, $2, 'free')",
                               [(f"org_{i:03d}", f"Bulk {i}") for i in range(60)])
    first = await admin.ok("GET", "/admin/orgs")
    assert (len(first["data"]), first["has_more"], first["data"][-1]["id"]) == (50, True, "org_049")
    rest = await admin.ok("GET", "/admin/orgs", after="org_049")
    assert ([o["id"] for o in rest["data"]], rest["has_more"]) == ([f"org_{i:03d}" for i in range(50, 60)], False)
    everything = await admin.ok("GET", "/admin/orgs", limit=500)
    assert (len(everything["data"]), everything["has_more"]) == (60, False)


async def test_a_key_is_shown_once_and_the_admin_token_never(admin: Admin) -> None:
    org = await admin.org()
    user = await admin.user("ann@acme.test")
    await admin.member(org, user, role="admin")
    created = await admin.call("POST", "/admin/keys", {"user_id": user, "org_id": org, "name": "ci"})
    key = created.json()["key"]
    assert TOKEN not in created.text
    responses = [
        await admin.call("GET", "/admin/keys", user_id=user),
        await admin.call("GET", "/admin/keys", org_id=org),
        await admin.call("GET", f"/admin/orgs/{org}"),
        await admin.call("GET", "/admin/users"),
        await admin.call("GET", "/admin/orgs"),
        await admin.call("DELETE", f"/admin/keys/{created.json()['id']}"),
        await admin.call("GET", "/admin/orgs", headers={"authorization": f"Bearer {TOKEN[:-1]}"}),
        await admin.call("GET", "/admin/orgs", headers={"authorization": f"Bearer {key}"}),
        await admin.call("POST", "/admin/orgs", {"name": TOKEN, "tier": "nope"}),
    ]
    for response in responses:
        assert key not in response.text and hash_key(key) not in response.text, response.request.url
        assert TOKEN not in response.text, response.request.url
    listed = responses[0].json()["data"]
    assert [k["prefix"] for k in listed] == [key[:10]]
    assert set(listed[0]) == {"id", "user_id", "org_id", "name", "prefix", "created_at", "revoked_at", "revoked",
                              "models", "routes", "read_only", "limit_millicredits", "limit_period", "usage"}
    stored = await admin.pool.fetchval("SELECT count(*) FROM creditgate.api_keys WHERE key_hash = $1", key)
    assert stored == 0  # only the hash is stored
    audit = await admin.pool.fetchval("SELECT string_agg(detail::text, ' ') FROM creditgate.admin_audit")
    assert key not in audit and TOKEN not in audit
