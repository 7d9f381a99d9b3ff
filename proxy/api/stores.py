"""Protocols of the stores behind the admin and caller APIs (the hot path's are in proxy/gateway/context.py).

`PgLedger` (proxy/ledger/pg.py) and `PgDirectory` (proxy/directory/pg.py) implement these; routes depend
only on the protocols. Amounts are integer millicredits; times are aware UTC datetimes; listings
return (rows, has_more) with `after` an opaque cursor from the last row's "id" field; a cursor the
store cannot have produced is 400 `invalid_value` (param "after"), never silently the first page.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from proxy.db.pool import Row
from proxy.directory.types import KeyScope


class LedgerAdmin(Protocol):
    async def grant(
        self, org_id: str, amount: int, reason: str, idempotency_key: str, expires_at: datetime | None, actor: str
    ) -> Row:
        """Idempotent by (org, idempotency_key); nets overage first. Returns the grant and the pool."""
        ...

    async def adjust(self, org_id: str, amount: int, reason: str, idempotency_key: str, actor: str) -> Row:
        """Signed correction (refunds positive); a negative one may not exceed available credit."""
        ...

    async def pool(self, org_id: str) -> Row:
        """{"balance", "held", "available", "overage", "granted"} for the org's pool."""
        ...

    async def credits(self, org_id: str, user_id: str, key_id: str | None = None) -> Row:
        """The GET /v1/credits body (CONTRACT.md, Caller's own endpoints)."""
        ...

    async def allocations(self, org_id: str, user_id: str | None = None) -> dict[str, Row]:
        """Each member's (or one member's) allocation by user id, as GET /v1/credits shows it to them."""
        ...

    async def entries(
        self, org_id: str, *, user_id: str | None, limit: int, after: str | None
    ) -> tuple[Sequence[Row], bool]:
        """Journal entries, newest first (GET /v1/credits/history and GET /admin/orgs/{org}/ledger)."""
        ...

    async def usage(
        self,
        org_id: str,
        *,
        group_by: str,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        end_user: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
    ) -> Sequence[Row]:
        """Usage totals grouped by "user" | "model" | "day" | "price_version" | "key_id" | "end_user" | "tag"
        (requests, tokens, charged, list price), optionally of one end user or tag; with `limit`, at most
        `limit` + 1 groups (one more says there are more)."""
        ...

    async def usage_records(
        self,
        org_id: str,
        *,
        user_id: str | None,
        start: datetime,
        end: datetime,
        end_user: str | None,
        tag: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Sequence[Row]:
        """One page of usage records in [start, end), oldest first, after the previous page's last
        (recorded_at, request_id): the CSV download's rows."""
        ...

    async def request(self, org_id: str, request_id: str) -> Row | None:
        """The GET /v1/requests/{id} body plus "user_id" (for the visibility check), or None."""
        ...

    async def provider_usage(self, org_id: str, user_id: str | None, provider: str) -> Row:
        """BYOK usage for one provider (user_id None = the whole org): requests, tokens, list price."""
        ...

    async def price_versions(self, *, limit: int, after: str | None) -> tuple[Sequence[Row], bool]:
        """The stored price versions (id, version, created_at), newest first."""
        ...

    async def price_version(self, version: str) -> Row | None:
        """One price version with its table ("prices": the canonical JSON text), or None."""
        ...


class DirectoryAdmin(Protocol):
    async def create_org(self, name: str, tier: str, actor: str) -> Row: ...

    async def list_orgs(self, limit: int, after: str | None) -> tuple[Sequence[Row], bool]: ...

    async def get_org(self, org_id: str) -> Row | None: ...

    async def update_org(self, org_id: str, changes: Row, actor: str) -> Row | None: ...

    async def create_user(self, email: str, name: str, actor: str) -> Row: ...

    async def list_users(self, limit: int, after: str | None) -> tuple[Sequence[Row], bool]: ...

    async def put_member(self, org_id: str, user_id: str, fields: Row, actor: str) -> Row:
        """The operator's lane: upsert a membership (may set the default org, lift any suspension)."""
        ...

    async def update_member(self, org_id: str, user_id: str, fields: Row, actor: str) -> Row:
        """An org admin's lane: change an existing member of `org_id` only (no `default`, no lifting
        the operator's suspension); 404 `member_not_found` for anyone else."""
        ...

    async def delete_member(self, org_id: str, user_id: str, actor: str) -> bool: ...

    async def create_key(self, user_id: str, org_id: str | None, name: str, actor: str,
                         scope: KeyScope | None = None) -> Row:
        """Returns {"id", "key", ...}: the only time the key itself is shown."""
        ...

    async def update_key(self, key_id: str, changes: Row, actor: str) -> str | None:
        """Changes the fields in `changes`; returns the key's hash (to drop it from every cache) or None."""
        ...

    async def list_keys(self, user_id: str | None, org_id: str | None, limit: int, after: str | None) -> tuple[
        Sequence[Row], bool
    ]: ...

    async def revoke_key(self, key_id: str, actor: str) -> str | None:
        """Marks the key revoked; returns its hash (to broadcast the revocation) or None if unknown."""
        ...

    async def audit(self, actor: str, action: str, org_id: str | None, target: str | None, detail: Row) -> None:
        """Records an admin action (with who did it) that its store did not record itself."""
        ...

    async def put_provider_key(
        self, org_id: str, scope: str, owner_id: str, provider: str, ciphertext: bytes, last4: str
    ) -> Row: ...

    async def list_provider_keys(self, org_id: str, user_id: str) -> Sequence[Row]: ...

    async def delete_provider_key(self, org_id: str, scope: str, owner_id: str, provider: str) -> bool: ...

    async def toggle_provider_key(
        self, org_id: str, scope: str, owner_id: str, provider: str, enabled: bool
    ) -> Row | None: ...
