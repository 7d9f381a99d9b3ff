"""Who is signed in to the console, and what they may see: the admin API's rules (proxy/admin/auth.py).

Signing in checks the pasted admin token (constant time) or API key exactly as the admin API checks a
bearer credential; an API key must belong to an admin of at least one org. Every later request reads the
session cookie (proxy/console/session.py), refuses a session that was signed out (proxy/console/signouts.py)
and looks the key up again through the same key lookup the admin API uses (the app's cache, which drops
revoked keys within a second), so a revoked key's session ends with it. Org pages then ask
`Authorizer.admin_of`: the operator sees every org, an org admin only the orgs they administer, and anything
else is the admin API's 403. A scoped API key must also be allowed to read those orgs (`may_open`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from proxy.admin.auth import OPERATOR, Authorizer, Caller
from proxy.config.settings import Secret
from proxy.console.session import COOKIE, Session, Sessions
from proxy.directory.apikeys import hash_key
from proxy.directory.scopes import check_route
from proxy.directory.types import ApiKey, Membership
from proxy.errors import ProxyError

MAX_CREDENTIAL = 512


class SignOuts(Protocol):
    """proxy/console/signouts.py's store."""

    async def sign_out(self, nonce: str, expires: int) -> None: ...

    async def signed_out(self, nonce: str) -> bool: ...


class NotSignedIn(Exception):
    """No valid session (absent, forged, expired, signed out, or its key revoked): the visitor is sent to
    sign in."""


@dataclass(frozen=True, slots=True)
class Visitor:
    caller: Caller
    session: Session
    csrf: str

    @property
    def label(self) -> str:
        return "operator" if self.caller.is_operator else self.caller.actor


class Guard:
    def __init__(self, sessions: Sessions, admin_token: Secret, lookup_key: Callable[[str], Awaitable[ApiKey | None]],
                 memberships: Callable[[str], Awaitable[Sequence[Membership]]], signouts: SignOuts) -> None:
        self.sessions = sessions
        self.signouts = signouts
        self._token = admin_token.reveal().encode()
        self._lookup_key = lookup_key
        self._memberships = memberships
        self.auth = Authorizer(admin_token, lookup_key, memberships)

    async def sign_in(self, credential: str) -> str:
        """The session subject for a pasted credential; 401 as the admin API answers, 403 for a key whose
        user administers no org (a plain member has nothing to see here)."""
        credential = credential.strip()
        if not credential or len(credential) > MAX_CREDENTIAL:
            raise ProxyError.invalid_api_key("Paste the admin token or an org admin's API key.")
        if hmac.compare_digest(credential.encode(), self._token):
            return OPERATOR
        key_hash = hash_key(credential)
        key = await self._lookup_key(key_hash)
        if key is None:
            raise ProxyError.invalid_api_key()
        if key.revoked:
            raise ProxyError.revoked_api_key()
        caller = Caller(key.user_id, key)
        if not await self.admin_orgs(caller, scoped=False):
            raise ProxyError.permission("admin_required", "This key's user is not an admin of any organization.")
        if not await self.admin_orgs(caller):
            raise ProxyError.permission("route_not_allowed", "This API key's scope does not allow the console.")
        return f"key:{key_hash}"

    async def visitor(self, request: Request) -> Visitor:
        session = self.sessions.read(request.cookies.get(COOKIE))
        if session is None or await self.signouts.signed_out(session.nonce):
            raise NotSignedIn
        if session.subject == OPERATOR:
            caller = Caller(OPERATOR, None)
        else:
            key_hash = session.key_hash
            key = None if key_hash is None else await self._lookup_key(key_hash)
            if key is None or key.revoked:
                raise NotSignedIn
            caller = Caller(key.user_id, key)
        return Visitor(caller, session, self.sessions.csrf(session))

    async def org(self, visitor: Visitor, org_id: str) -> None:
        """The admin API's check for `org_id` (403 `not_a_member`, `admin_required`, `suspended`), then the
        key's scope: it must allow reading the org's admin routes or its console pages."""
        await self.auth.admin_of(visitor.caller, org_id)
        if not may_open(visitor.caller.key, org_id):
            raise ProxyError.permission("route_not_allowed", "This API key may not open this organization's pages.")

    async def admin_orgs(self, caller: Caller, *, scoped: bool = True) -> list[str]:
        """The orgs an org admin may open here (their key's bound org, or every org they administer), and
        with `scoped` only those the key's scope allows."""
        if caller.key is None:
            return []
        found = []
        for m in await self._memberships(caller.key.user_id):
            if m.role == "admin" and not (m.member_suspended or m.org_suspended) and (
                    caller.key.bound_org_id in (None, m.org_id)) and (not scoped or may_open(caller.key, m.org_id)):
                found.append(m.org_id)
        return found


def may_write(key: ApiKey | None, method: str, admin_path: str, console_path: str) -> None:
    """A change made through a console form: the key's scope must allow the admin API's route for it
    (`method admin_path`) or the console's form (`POST console_path`); else the admin API's 403 (a
    read-only key is `read_only_key`)."""
    try:
        check_route(key, method, admin_path)
    except ProxyError:
        check_route(key, "POST", console_path)


def may_open(key: ApiKey | None, org_id: str) -> bool:
    """A scoped key (proxy/directory/scopes.py) opens an org's pages when its routes allow reading that org
    on the admin API (`/admin`, `/admin/orgs`, `/admin/orgs/<org>`) or in the console (`/console`...). Pages
    are reads, so a read-only key may use them (and sign out)."""
    for path in (f"/admin/orgs/{org_id}", f"/console/orgs/{org_id}"):
        try:
            check_route(key, "GET", path)
        except ProxyError:
            continue
        return True
    return False
