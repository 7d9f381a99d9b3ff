"""Signing in and who a session is, with the admin API's rules, through an in-memory key directory."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from starlette.requests import Request

from proxy.admin.auth import OPERATOR
from proxy.config.settings import Secret
from proxy.console.guard import Guard, NotSignedIn
from proxy.console.session import COOKIE, Sessions
from proxy.directory.apikeys import hash_key
from proxy.directory.types import ApiKey, Membership
from proxy.errors import ProxyError

TOKEN = Secret("operator-token-" + "g" * 24)
KEYS = {"sk-cg-admin": ApiKey("key_admin", "usr_admin", None, False),
        "sk-cg-bound": ApiKey("key_bound", "usr_admin", "org_b", False),
        "sk-cg-member": ApiKey("key_member", "usr_member", None, False),
        "sk-cg-revoked": ApiKey("key_revoked", "usr_admin", None, True),
        "sk-cg-chat-only": ApiKey("key_chat", "usr_admin", None, False, routes=("/v1/chat/completions",)),
        "sk-cg-admin-a": ApiKey("key_scoped", "usr_admin", None, False, routes=("/admin/orgs/org_a",),
                                read_only=True),
        "sk-cg-console": ApiKey("key_console", "usr_admin", None, False, routes=("/console",))}


def membership(org: str, user: str, role: str, suspended: bool = False) -> Membership:
    return Membership(org, user, role, False, None, suspended, "free", False)


MEMBERSHIPS = {"usr_admin": [membership("org_a", "usr_admin", "admin"), membership("org_b", "usr_admin", "admin"),
                             membership("org_c", "usr_admin", "member"),
                             membership("org_d", "usr_admin", "admin", suspended=True)],
               "usr_member": [membership("org_a", "usr_member", "member")]}


class Directory:
    def __init__(self) -> None:
        self.keys = {hash_key(k): v for k, v in KEYS.items()}

    async def lookup(self, key_hash: str) -> ApiKey | None:
        return self.keys.get(key_hash)

    async def memberships(self, user_id: str) -> Sequence[Membership]:
        return MEMBERSHIPS.get(user_id, [])


class SignOuts:
    """In memory (the real store is tested in test_signouts.py)."""

    def __init__(self) -> None:
        self.nonces: dict[str, int] = {}

    async def sign_out(self, nonce: str, expires: int) -> None:
        self.nonces[nonce] = expires

    async def signed_out(self, nonce: str) -> bool:
        return nonce in self.nonces


def cookie_request(value: str | None) -> Request:
    headers = [] if value is None else [(b"cookie", f"{COOKIE}={value}".encode())]
    return Request({"type": "http", "method": "GET", "path": "/console", "headers": headers, "query_string": b""})


@pytest.fixture
def world() -> tuple[Guard, Directory]:
    directory = Directory()
    return Guard(Sessions(TOKEN), TOKEN, directory.lookup, directory.memberships, SignOuts()), directory


async def test_sign_in(world: tuple[Guard, Directory]) -> None:
    guard, _ = world
    assert await guard.sign_in(f"  {TOKEN.reveal()} ") == OPERATOR
    assert await guard.sign_in("sk-cg-admin") == f"key:{hash_key('sk-cg-admin')}"
    assert await guard.sign_in("sk-cg-admin-a") == f"key:{hash_key('sk-cg-admin-a')}"
    for credential, code in [("sk-cg-member", "admin_required"), ("sk-cg-chat-only", "route_not_allowed"),
                             ("sk-cg-revoked", "revoked_api_key"),
                             ("sk-cg-unknown", "invalid_api_key"), ("", "invalid_api_key"),
                             ("x" * 513, "invalid_api_key"), (TOKEN.reveal() + "x", "invalid_api_key")]:
        with pytest.raises(ProxyError) as caught:
            await guard.sign_in(credential)
        assert caught.value.code == code, credential


async def test_the_session_is_looked_up_again_on_every_request(world: tuple[Guard, Directory]) -> None:
    guard, directory = world
    _, value = guard.sessions.issue(await guard.sign_in("sk-cg-admin"))
    visitor = await guard.visitor(cookie_request(value))
    assert (visitor.caller.actor, visitor.label, visitor.csrf) == ("usr_admin", "usr_admin",
                                                                 guard.sessions.csrf(visitor.session))
    directory.keys[hash_key("sk-cg-admin")] = ApiKey("key_admin", "usr_admin", None, True)  # revoked since
    with pytest.raises(NotSignedIn):
        await guard.visitor(cookie_request(value))
    del directory.keys[hash_key("sk-cg-admin")]
    with pytest.raises(NotSignedIn):
        await guard.visitor(cookie_request(value))
    for bad in (None, "", "nonsense"):
        with pytest.raises(NotSignedIn):
            await guard.visitor(cookie_request(bad))
    _, operator = guard.sessions.issue(OPERATOR)
    assert (await guard.visitor(cookie_request(operator))).label == "operator"


async def test_which_orgs_an_admin_opens(world: tuple[Guard, Directory]) -> None:
    guard, _ = world
    admin = await guard.visitor(cookie_request(guard.sessions.issue(await guard.sign_in("sk-cg-admin"))[1]))
    bound = await guard.visitor(cookie_request(guard.sessions.issue(await guard.sign_in("sk-cg-bound"))[1]))
    operator = await guard.visitor(cookie_request(guard.sessions.issue(OPERATOR)[1]))
    assert await guard.admin_orgs(admin.caller) == ["org_a", "org_b"]
    assert await guard.admin_orgs(bound.caller) == ["org_b"]
    assert await guard.admin_orgs(operator.caller) == []
    await guard.org(admin, "org_a")
    await guard.org(operator, "org_zzz")
    for visitor, org, code in [(admin, "org_c", "admin_required"), (admin, "org_d", "suspended"),
                               (admin, "org_x", "not_a_member"), (bound, "org_a", "not_a_member")]:
        with pytest.raises(ProxyError) as caught:
            await guard.org(visitor, org)
        assert caught.value.code == code


async def test_a_scoped_key_opens_only_what_its_routes_allow(world: tuple[Guard, Directory]) -> None:
    guard, _ = world
    scoped = await guard.visitor(cookie_request(guard.sessions.issue(await guard.sign_in("sk-cg-admin-a"))[1]))
    console = await guard.visitor(cookie_request(guard.sessions.issue(await guard.sign_in("sk-cg-console"))[1]))
    assert await guard.admin_orgs(scoped.caller) == ["org_a"]
    assert await guard.admin_orgs(console.caller) == ["org_a", "org_b"]
    await guard.org(scoped, "org_a")  # read-only: pages are reads
    with pytest.raises(ProxyError) as caught:
        await guard.org(scoped, "org_b")
    assert caught.value.code == "route_not_allowed"
    await guard.org(console, "org_b")


async def test_a_signed_out_session_is_refused_and_no_other(world: tuple[Guard, Directory]) -> None:
    guard, _ = world
    _, admin = guard.sessions.issue(await guard.sign_in("sk-cg-admin"))
    _, operator = guard.sessions.issue(await guard.sign_in(TOKEN.reveal()))
    first = await guard.visitor(cookie_request(admin))
    await guard.signouts.sign_out(first.session.nonce, first.session.expires)
    with pytest.raises(NotSignedIn):
        await guard.visitor(cookie_request(admin))
    assert (await guard.visitor(cookie_request(operator))).caller.is_operator
    _, again = guard.sessions.issue(await guard.sign_in("sk-cg-admin"))  # signing in again is a new session
    assert (await guard.visitor(cookie_request(again))).caller.actor == "usr_admin"
