"""What the admin route handlers share: the stores, the authorizer, and the body reader (with the
configured tiers and power levels)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.admin.auth import Authorizer
from proxy.api.decode import BodyReader
from proxy.api.stores import DirectoryAdmin, LedgerAdmin
from proxy.db.pool import Row
from proxy.directory.types import Membership


class AdminDirectory(DirectoryAdmin, Protocol):
    """`DirectoryAdmin` plus the reads the admin routes need (PgDirectory implements all of it)."""

    async def list_users(
        self, limit: int, after: str | None, email: str | None = None
    ) -> tuple[Sequence[Row], bool]: ...

    async def memberships(self, user_id: str) -> Sequence[Membership]: ...

    async def get_key(self, key_id: str) -> Row | None: ...

    async def list_audit(self, org_id: str | None, limit: int, after: str | None) -> tuple[Sequence[Row], bool]: ...


@dataclass(frozen=True, slots=True)
class AdminDeps:
    directory: AdminDirectory
    ledger: LedgerAdmin
    auth: Authorizer
    on_revoke: Callable[[str], Awaitable[None]]
    bodies: BodyReader
