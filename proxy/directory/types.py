"""What the hot path knows of the directory: an API key, a membership with its org, a stored BYOK key,
and the read-only `Directory` protocol PgDirectory implements (proxy/directory/pg.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key as the directory knows it (looked up by hash; the key itself is never stored)."""

    id: str
    user_id: str
    bound_org_id: str | None
    revoked: bool
    # its scope (proxy/directory/scopes.py); None: no narrowing. Its spend limit lives in the ledger.
    models: tuple[str, ...] | None = None
    routes: tuple[str, ...] | None = None
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class KeyScope:
    """What POST /admin/keys may set beyond the name, already validated (proxy/directory/scopes.py)."""

    models: tuple[str, ...] | None = None
    routes: tuple[str, ...] | None = None
    read_only: bool = False
    limit_millicredits: int | None = None
    limit_period: str = "none"


@dataclass(frozen=True, slots=True)
class Membership:
    """One org a user belongs to, with what the chain needs about the org."""

    org_id: str
    user_id: str
    role: str  # "member" | "admin"
    is_default: bool
    power_level: str | None
    member_suspended: bool
    org_tier: str
    org_suspended: bool


@dataclass(frozen=True, slots=True)
class StoredProviderKey:
    """An encrypted BYOK key; `scope` is "user" or "org"."""

    provider: str
    scope: str
    ciphertext: bytes
    enabled: bool


class Directory(Protocol):
    """The read side of orgs, users, memberships and keys."""

    async def api_key(self, key_hash: str) -> ApiKey | None: ...

    async def memberships(self, user_id: str) -> Sequence[Membership]: ...

    async def provider_keys(self, org_id: str, user_id: str, provider: str) -> Sequence[StoredProviderKey]: ...
