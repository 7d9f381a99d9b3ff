"""PgDirectory: orgs, users, memberships, API keys and BYOK keys in PostgreSQL.

Implements `Directory` (proxy/gateway/context.py, the hot path's read side) and `DirectoryAdmin`
(proxy/api/stores.py), plus `get_key` and `audit` for the admin routes. One statement per call; every
admin write records its `admin_audit` row in the same statement. Database errors are translated to
`ProxyError` in one place (`_translate`): unknown references are 404, duplicates 409, an unreachable
database 503 `ledger_unavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from proxy.db.pool import UNAVAILABLE, Pool, Row, parse_serial_cursor
from proxy.directory import sql
from proxy.directory.apikeys import generate_key
from proxy.directory.ids import new_id
from proxy.directory.types import ApiKey, KeyScope, Membership, StoredProviderKey
from proxy.errors import ProxyError

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0  # waiting for a connection, and for a statement: past this the directory is "unavailable"

# constraint name -> the error a caller sees
_NOT_FOUND = {
    "memberships_org_id_fkey": ("org_not_found", "Unknown organization."),
    "memberships_user_id_fkey": ("user_not_found", "Unknown user."),
    "api_keys_user_id_fkey": ("user_not_found", "Unknown user."),
    "api_keys_org_id_fkey": ("org_not_found", "Unknown organization."),
    "provider_keys_org_id_fkey": ("org_not_found", "Unknown organization."),
}
# update_member's refusals (proxy/db/migrations/0004_admin_lanes.sql): sqlstate, message -> what a caller sees
_REFUSED = {
    ("CG403", "operator_only"): (403, "operator_only", "Only the operator sets a member's default organization."),
    ("CG403", "suspension_is_operators"): (403, "operator_only",
                                           "Only the operator may lift a suspension the operator set."),
    ("CG403", "admin_required"): (403, "admin_required", "Only an admin of this organization may do this."),
    ("CG404", "member_not_found"): (404, "member_not_found", "That user is not a member of this organization."),
}
_CONFLICT = {
    "users_email_key": ("email_taken", "A user with this email already exists."),
    "memberships_one_default": ("default_conflict", "The user's default organization changed concurrently."),
}


def _translate(exc: BaseException) -> BaseException:
    """The one mapping from database errors to what a caller sees; unknown errors pass unchanged."""
    if isinstance(exc, asyncpg.ForeignKeyViolationError) and exc.constraint_name in _NOT_FOUND:
        code, message = _NOT_FOUND[exc.constraint_name]
        return ProxyError.not_found(code, message)
    if isinstance(exc, asyncpg.UniqueViolationError):
        code, message = _CONFLICT.get(exc.constraint_name or "", ("duplicate", "That already exists."))
        return ProxyError(409, "conflict_error", code, message)
    if isinstance(exc, asyncpg.CheckViolationError):
        return ProxyError.invalid_value(None, f"A value violates the constraint {exc.constraint_name}.")
    refused = _REFUSED.get((getattr(exc, "sqlstate", None) or "", str(exc)))
    if refused is not None:
        status, code, message = refused
        kind = "permission_error" if status == 403 else "not_found_error"
        return ProxyError(status, kind, code, message)
    if isinstance(exc, UNAVAILABLE):
        log.warning("directory unavailable: %s", type(exc).__name__)
        return ProxyError.ledger_unavailable()
    return exc


def _names(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _array(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def key_row(row: Row) -> Row:
    """A key as the admin API shows it: its scope, its limit and, for a key bound to an org, `usage`: its
    spend this period there (`used` posted, `held` pending, `available` under its limit, null without one)."""
    spent, resets_at = row.pop("spent", None), row.pop("resets_at", None)
    row["models"], row["routes"] = _names(row.get("models")), _names(row.get("routes"))
    if row.get("org_id") is None or row.get("limit_period") is None:
        row["usage"] = None
        return row
    used, held = (int(spent[0]), int(spent[1])) if spent else (0, 0)
    limit = row["limit_millicredits"]
    row["usage"] = {"limit": limit, "used": used, "held": held,
                    "available": None if limit is None else max(0, limit - used - held),
                    "period": row["limit_period"], "resets_at": resets_at}
    return row


def _row(record: asyncpg.Record | None) -> Row | None:
    return None if record is None else dict(record)


def _page(records: Sequence[asyncpg.Record], limit: int) -> tuple[list[Row], bool]:
    return [dict(r) for r in records[:limit]], len(records) > limit


class PgDirectory:
    """The directory over an asyncpg pool (whose connections need no particular search_path)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            async with self._pool.acquire(timeout=TIMEOUT_SECONDS) as conn:
                return list(await conn.fetch(query, *args, timeout=TIMEOUT_SECONDS))
        except (asyncpg.PostgresError, *UNAVAILABLE) as exc:
            raise _translate(exc) from exc

    async def _one(self, query: str, *args: Any) -> Row:
        """A statement that returns exactly one row (INSERT ... RETURNING, aggregates) or raises."""
        rows = await self._fetch(query, *args)
        if len(rows) != 1:
            raise RuntimeError(f"expected one row, got {len(rows)}")
        return dict(rows[0])

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        rows = await self._fetch(query, *args)
        return rows[0] if rows else None

    # ------------------------------------------------------------------ hot path (Directory)

    async def api_key(self, key_hash: str) -> ApiKey | None:
        """The key with this SHA-256 hex hash; revoked keys come back with revoked=True."""
        r = await self._fetchrow(sql.API_KEY, key_hash)
        if r is None:
            return None
        return ApiKey(r["id"], r["user_id"], r["org_id"], r["revoked"], _names(r["models"]), _names(r["routes"]),
                      r["read_only"])

    async def memberships(self, user_id: str) -> Sequence[Membership]:
        """The user's orgs (default first) with each org's tier and suspension."""
        return [Membership(**dict(r)) for r in await self._fetch(sql.MEMBERSHIPS, user_id)]

    async def provider_keys(self, org_id: str, user_id: str, provider: str) -> Sequence[StoredProviderKey]:
        """The member's own key for `provider`, then the org's (enabled or not; the caller decides)."""
        rows = await self._fetch(sql.PROVIDER_KEYS, org_id, user_id, provider)
        return [StoredProviderKey(r["provider"], r["scope"], bytes(r["ciphertext"]), r["enabled"]) for r in rows]

    # ------------------------------------------------------------------ orgs and users

    async def create_org(self, name: str, tier: str, actor: str) -> Row:
        return await self._one(sql.CREATE_ORG, new_id("org"), name, tier, actor)

    async def list_orgs(self, limit: int, after: str | None) -> tuple[Sequence[Row], bool]:
        return _page(await self._fetch(sql.LIST_ORGS, after, limit + 1), limit)

    async def get_org(self, org_id: str) -> Row | None:
        """The org with its members (each with email, role, allocation, default, power level)."""
        row = _row(await self._fetchrow(sql.GET_ORG, org_id))
        if row is not None:
            row["members"] = orjson.loads(row["members"])
        return row

    async def update_org(self, org_id: str, changes: Row, actor: str) -> Row | None:
        """Applies "tier" and/or "suspended" from `changes`; None if the org is unknown."""
        args = (org_id, changes.get("tier"), changes.get("suspended"), actor)
        return _row(await self._fetchrow(sql.UPDATE_ORG, *args))

    async def create_user(self, email: str, name: str, actor: str) -> Row:
        """Raises 409 `email_taken` for an email already in use."""
        return await self._one(sql.CREATE_USER, new_id("usr"), email, name, actor)

    async def list_users(
        self, limit: int, after: str | None, email: str | None = None
    ) -> tuple[Sequence[Row], bool]:
        """Users by id; `email` (lower-case, as stored) finds one."""
        return _page(await self._fetch(sql.LIST_USERS, after, limit + 1, email), limit)

    # ------------------------------------------------------------------ memberships

    async def put_member(self, org_id: str, user_id: str, fields: Row, actor: str) -> Row:
        """The operator's lane. Upserts; only the given fields (role, allocation_millicredits,
        allocation_period, default, power_level, suspended) change an existing membership; `default`
        clears the user's default elsewhere, audited in each org it changed. 404 for an unknown org or
        user."""
        return await self._one(sql.PUT_MEMBER, org_id, user_id, orjson.dumps(fields).decode(), actor)

    async def update_member(self, org_id: str, user_id: str, fields: Row, actor: str) -> Row:
        """An org admin's lane (`actor` is their usr_ id): changes an existing member of `org_id` only.
        404 `member_not_found` when the user is not a member (whether or not they exist); 403
        `operator_only` for `default` or for lifting a suspension the operator set; 403
        `admin_required` when the actor is no longer an unsuspended admin of the org."""
        return await self._one(sql.UPDATE_MEMBER, org_id, user_id, orjson.dumps(fields).decode(), actor)

    async def delete_member(self, org_id: str, user_id: str, actor: str) -> bool:
        """Removes the membership (usage and ledger rows keep their ids); False if there was none."""
        return bool((await self._one(sql.DELETE_MEMBER, org_id, user_id, actor))["count"])

    # ------------------------------------------------------------------ API keys

    async def create_key(self, user_id: str, org_id: str | None, name: str, actor: str,
                         scope: KeyScope | None = None) -> Row:
        """Returns the key row plus "key", the only time the key itself is shown. 404 for an unknown
        user or org; 403 `not_a_member` when the user is not a member of the org the key binds. A key with a
        spend limit must be bound to an org (400: its limit is one number, not one per org)."""
        scope = scope or KeyScope()
        if scope.limit_millicredits is not None and org_id is None:
            raise ProxyError.invalid_value("org_id", "A key with a spend limit must be bound to an org ('org_id').")
        new = generate_key()
        args = (new_id("key"), user_id, org_id, name, new.key_hash, new.prefix, actor, _array(scope.models),
                _array(scope.routes), scope.read_only, scope.limit_millicredits, scope.limit_period)
        r = await self._one(sql.CREATE_KEY, *args)
        if not r["user_exists"]:
            raise ProxyError.not_found("user_not_found", "Unknown user.")
        if not r["org_exists"]:
            raise ProxyError.not_found("org_not_found", "Unknown organization.")
        if r["id"] is None:
            raise ProxyError.permission("not_a_member", "The user is not a member of that organization.")
        row = key_row({k: v for k, v in r.items() if k not in ("user_exists", "org_exists")})
        return {**row, "key": new.secret.reveal()}

    async def get_key(self, key_id: str) -> Row | None:
        """The key's row (no hash, no key), revoked or not, with its spend this period."""
        r = await self._fetchrow(sql.GET_KEY, key_id)
        return None if r is None else key_row(dict(r))

    async def list_keys(
        self, user_id: str | None, org_id: str | None, limit: int, after: str | None
    ) -> tuple[Sequence[Row], bool]:
        rows, more = _page(await self._fetch(sql.LIST_KEYS, user_id, org_id, after, limit + 1), limit)
        return [key_row(r) for r in rows], more

    async def update_key(self, key_id: str, changes: Row, actor: str) -> str | None:
        """Changes the fields named in `changes` (name, models, routes, read_only, limit_millicredits,
        limit_period; validated by the caller) and audits them. Returns the key's hash, to drop it from every
        replica's cache, or None for an unknown key."""
        if changes.get("limit_millicredits") is not None:
            current = await self.get_key(key_id)
            if current is not None and current["org_id"] is None:
                raise ProxyError.invalid_value("limit_millicredits",
                                               "A key with a spend limit must be bound to an org.")
        detail = orjson.dumps(changes).decode()
        r = await self._fetchrow(sql.UPDATE_KEY, key_id, actor, detail, _array(changes.get("models")),
                                 _array(changes.get("routes")))
        return None if r is None else str(r["key_hash"])

    async def revoke_key(self, key_id: str, actor: str) -> str | None:
        """Marks the key revoked (idempotent); returns its hash to broadcast, or None if unknown."""
        r = await self._fetchrow(sql.REVOKE_KEY, key_id, actor)
        return None if r is None else str(r["key_hash"])

    # ------------------------------------------------------------------ audit

    async def audit(self, actor: str, action: str, org_id: str | None, target: str | None, detail: Row) -> None:
        """Records an admin action done elsewhere (grants and adjustments live in the ledger)."""
        await self._fetch(sql.AUDIT, actor, action, org_id, target, orjson.dumps(detail, default=str).decode())

    async def list_audit(self, org_id: str | None, limit: int, after: str | None) -> tuple[Sequence[Row], bool]:
        """Admin actions, newest first, optionally of one org; `after` is the last row's "id" (anything
        else is 400 invalid_value, never silently the first page)."""
        cursor = parse_serial_cursor(after)
        rows, has_more = _page(await self._fetch(sql.LIST_AUDIT, org_id, cursor, limit + 1), limit)
        for row in rows:
            row["id"] = str(row["id"])
            row["detail"] = orjson.loads(row["detail"])
        return rows, has_more

    # ------------------------------------------------------------------ BYOK keys

    async def put_provider_key(
        self, org_id: str, scope: str, owner_id: str, provider: str, ciphertext: bytes, last4: str
    ) -> Row:
        """Stores (or replaces, re-enabled) the encrypted key; returns the masked row."""
        return await self._one(sql.PUT_PROVIDER_KEY, org_id, scope, owner_id, provider, ciphertext, last4)

    async def list_provider_keys(self, org_id: str, user_id: str) -> Sequence[Row]:
        """The member's own keys and the org's, masked (provider, scope, last4, enabled, times)."""
        return [dict(r) for r in await self._fetch(sql.LIST_PROVIDER_KEYS, org_id, user_id)]

    async def delete_provider_key(self, org_id: str, scope: str, owner_id: str, provider: str) -> bool:
        return await self._fetchrow(sql.DELETE_PROVIDER_KEY, org_id, scope, owner_id, provider) is not None

    async def toggle_provider_key(
        self, org_id: str, scope: str, owner_id: str, provider: str, enabled: bool
    ) -> Row | None:
        args = (org_id, scope, owner_id, provider, enabled)
        return _row(await self._fetchrow(sql.TOGGLE_PROVIDER_KEY, *args))


