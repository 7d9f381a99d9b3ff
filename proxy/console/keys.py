"""An org's API keys: the list with each key's scope and its spend this period, one key's page, and the
forms that create a key, change a key's scope and limit, and revoke it.

The rules are the admin API's (proxy/admin/people.py), applied to the org of the page (which the guard
already checked: the operator, or an admin of it): an org admin creates keys bound to the org for
themselves and its plain members (another admin's key is the operator's, `operator_only`); changes and
revokes a key bound to the org only through their own key bound to it (as PATCH and DELETE
/admin/keys/{key} imply the org from the caller's key); another org's key is the admin API's 403
`not_a_member` whether it exists or not. Input is decoded through the same body declarations (CreateKey,
PatchKey) and proxy/directory/scopes.py's parse_models/parse_routes, the same store calls write and audit
it, and a change or revocation is broadcast through the admin API's `on_revoke` (every replica drops the
key within a second; a failed broadcast is the same 503 `revocation_not_broadcast`, the change kept).
A new key is on the answer's page only (never in a URL, never stored in clear). The create form carries a
one-time token, as the onboarding form does (proxy/console/onboard.py): sent again, it shows the key it
made (without the key) and creates nothing.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

import orjson
from starlette.requests import Request

from proxy.admin.auth import Caller
from proxy.admin.input import path_id
from proxy.api.bodies import CreateKey, PatchKey
from proxy.api.jsonapi import id_cursor, page
from proxy.console.deps import ConsoleDeps
from proxy.console.forms import text
from proxy.console.guard import Visitor, may_write
from proxy.console.html import amount, cell, choice, esc, facts, field, hidden, link, money, table, when
from proxy.console.onboard import millicredits, one_time
from proxy.console.pages import org_not_found
from proxy.db.pool import Row
from proxy.directory.scopes import parse_models, parse_routes
from proxy.directory.types import KeyScope
from proxy.errors import ProxyError

log = logging.getLogger(__name__)
PERIODS = ("none", "day", "week", "month")
AUDIT_ACTION = "console.key"  # a create form's one-time token, with the key it made


def href(org_id: str, key_id: str = "") -> str:
    return f"/console/orgs/{org_id}/keys" + (f"/{key_id}" if key_id else "")


def member_not_found() -> ProxyError:
    return ProxyError.not_found("member_not_found", "That user is not a member of this organization.")


def _names(form: dict[str, str], name: str) -> list[str] | None:
    """"a, b c" -> ["a", "b", "c"]; empty -> None (every model, every route)."""
    raw = text(form, name, required=False, limit=32 * 130)
    return None if raw is None else [v for v in re.split(r"[\s,]+", raw) if v]


def _scope_fields(form: dict[str, str]) -> dict[str, Any]:
    raw_limit = text(form, "limit_credits", required=False, limit=30)
    return {"models": _names(form, "models"), "routes": _names(form, "routes"),
            "read_only": form.get("read_only") == "on",
            "limit_millicredits": None if raw_limit is None else millicredits(raw_limit, "limit_credits"),
            "limit_period": form.get("limit_period", "none")}


def _usage(key: Row) -> str:
    usage = key.get("usage") or {}
    return (f'{money(key.get("limit_millicredits"))}{cell(key.get("limit_period"))}{money(usage.get("used"))}'
            f'{money(usage.get("held"))}{money(usage.get("available"))}')


def _listed(values: Any) -> str:
    return ", ".join(values) if values else "all"


def rows(org_id: str, keys: list[Row]) -> str:
    return table(
        ["Key", "Name", "Member", "Prefix", "Models", "Routes", "Read-only", "Limit", "Period", "Used", "Held",
         "Available", "Revoked"],
        (f'<td data-key="{esc(k["id"])}">{link(href(org_id, k["id"]), k["id"])}</td>{cell(k["name"])}'
         f'{cell(k["user_id"])}<td><code>{esc(k["prefix"])}…</code></td>{cell(_listed(k.get("models")))}'
         f'{cell(_listed(k.get("routes")))}{cell("yes" if k.get("read_only") else "no")}{_usage(k)}'
         f'<td>{when(k["revoked_at"]) if k["revoked"] else "no"}</td>' for k in keys),
        name="keys", empty="No keys bound to this organization.")


def _scope_inputs(values: dict[str, str]) -> str:
    checked = " checked" if values.get("read_only") == "on" else ""
    return (f"{field('Models (comma-separated; empty: every model the tier allows)', 'models', value=values.get('models', ''))}"  # noqa: E501
            f"{field('Routes (comma-separated paths; empty: every route)', 'routes', value=values.get('routes', ''))}"
            f'<label class="check"><input type="checkbox" name="read_only" id="f-read_only"{checked}> '
            "Read-only (GET only)</label>"
            f"{field('Spend limit in credits (empty: none)', 'limit_credits', value=values.get('limit_credits', ''))}"
            f"{choice('Limit period', 'limit_period', PERIODS, values.get('limit_period'))}")


async def creatable(d: ConsoleDeps, org_id: str, caller: Caller) -> list[str]:
    """Members the caller may create a key for: any for the operator; else themselves and plain members."""
    org = await d.directory.get_org(org_id)
    members = [] if org is None else org["members"]
    return [m["user_id"] for m in members if caller.is_operator or m["user_id"] == caller.actor or m["role"] != "admin"]


def create_form(org_id: str, csrf: str, users: list[str], values: dict[str, str] | None = None) -> str:
    v = values or {}
    return (f'<form method="post" action="{esc(href(org_id))}" class="stack" id="create-key">{hidden("csrf", csrf)}'
            f'{hidden("once", v.get("once") or secrets.token_urlsafe(24))}'
            f"{choice('Member', 'user_id', users, v.get('user_id'))}{field('Name', 'name', value=v.get('name', ''))}"
            f"{_scope_inputs(v)}<button type=\"submit\">Create key</button></form>")


def _values(key: Row) -> dict[str, str]:
    limit = key.get("limit_millicredits")
    return {"name": key["name"] or "", "models": ", ".join(key.get("models") or []),
            "routes": ", ".join(key.get("routes") or []), "read_only": "on" if key.get("read_only") else "",
            "limit_credits": "" if limit is None else f"{limit // 1000}.{limit % 1000:03d}",
            "limit_period": key.get("limit_period") or "none"}


def detail(org_id: str, key: Row, csrf: str, values: dict[str, str] | None = None, *, editable: bool = True) -> str:
    """One key: its facts, the change form (current values filled in) and, unless revoked, the revoke form."""
    usage = key.get("usage") or {}
    pairs = [("Key", f'<code id="key-id">{esc(key["id"])}</code>'), ("Name", esc(key["name"])),
             ("Member", esc(key["user_id"])), ("Prefix", f"<code>{esc(key['prefix'])}…</code>"),
             ("Models", esc(_listed(key.get("models")))), ("Routes", esc(_listed(key.get("routes")))),
             ("Read-only", "yes" if key.get("read_only") else "no"), ("Period", esc(key.get("limit_period"))),
             *((label, amount(usage[name], f"key-{name}")) for label, name in (
                 ("Limit", "limit"), ("Used", "used"), ("Held", "held"), ("Available", "available"))
               if usage.get(name) is not None),
             ("Resets", when(usage.get("resets_at"))), ("Created", when(key.get("created_at"))),
             ("Revoked", f'<span id="key-revoked">{when(key["revoked_at"]) if key["revoked"] else "no"}</span>')]
    if key["revoked"]:
        return facts(pairs, name="key")
    if not editable:
        return (f'{facts(pairs, name="key")}<p class="note" id="read-only-lane">Only the operator, or an admin signed '
                "in with a key bound to this organization, changes or revokes its keys (as the admin API).</p>")
    target = href(org_id, key["id"])
    shown = values or _values(key)
    change = (f'<form method="post" action="{esc(target)}" class="stack" id="change-key">{hidden("csrf", csrf)}'
              f"{field('Name', 'name', value=shown.get('name', ''))}{_scope_inputs(shown)}"
              '<button type="submit">Save changes</button></form>')
    revoke = (f'<form method="post" action="{esc(target)}/revoke" id="revoke-key">{hidden("csrf", csrf)}'
              '<button type="submit">Revoke this key</button></form>')
    return (f"{facts(pairs, name='key')}<section><h2>Change scope and limit</h2>{change}</section>"
            f"<section><h2>Revoke</h2><p>Every replica refuses the key within a second.</p>{revoke}</section>")


async def listing(d: ConsoleDeps, org_id: str, request: Request, caller: Caller, csrf: str, problem: str = "",
                  values: dict[str, str] | None = None) -> tuple[str, str]:
    """The org's keys (GET /admin/keys?org_id= paging) and the create form."""
    org = await d.directory.get_org(org_id)
    if org is None:
        raise org_not_found()
    limit, after = page(request.query_params, id_cursor("key"))
    found, has_more = await d.directory.list_keys(None, org_id, limit, after)
    more = (f'<p class="more">{link(href(org_id), "Older →", after=str(found[-1]["id"]), limit=str(limit))}</p>'
            if has_more and found else "")
    warn = f'<p class="error" id="error">{esc(problem)}</p>' if problem else ""
    users = await creatable(d, org_id, caller)
    body = (f'<section class="wide">{rows(org_id, list(found))}{more}</section><section><h2>New key</h2>{warn}'
            f"{create_form(org_id, csrf, users, values)}</section>")
    return f"{org['name']}: API keys", body


def created_page(org_id: str, created: Row) -> str:
    return (f"<p>Created {esc(created['id'])} for {esc(created['user_id'])}.</p><h2>The API key</h2>"
            '<p class="once">Copy it now: it is shown on this page only, and never again.</p>'
            f'<pre id="new-key">{esc(created["key"])}</pre>{rows(org_id, [created])}'
            f'<p>{link(href(org_id), "Back to the keys")}</p>')


async def list_page(d: ConsoleDeps, visitor: Visitor, org_id: str, request: Request) -> tuple[str, str]:
    return await listing(d, org_id, request, visitor.caller, visitor.csrf)


async def key_page(d: ConsoleDeps, visitor: Visitor, org_id: str, request: Request) -> tuple[str, str]:
    key = await lane(d, visitor.caller, org_id, path_id(request, "key", "key"), change=False)
    return f"API key {key['id']}", detail(org_id, key, visitor.csrf, editable=may_change(visitor.caller))


async def create_post(d: ConsoleDeps, visitor: Visitor, org_id: str, request: Request,
                      form: dict[str, str]) -> str | tuple[str, str, int]:
    """The new key's page (201, the key shown once), or the keys page with the refused input (400)."""
    may_write(visitor.caller.key, "POST", "/admin/keys", href(org_id))
    try:
        once = one_time(form)
        async with d.reads.exclusive(f"{AUDIT_ACTION}:{once}"):
            earlier = await d.reads.audited(AUDIT_ACTION, once)
            if earlier is not None:
                return "New API key", await sent_before(d, org_id, earlier), 200
            created = await create(d, org_id, form, visitor.caller)
            await d.directory.audit(visitor.caller.actor, AUDIT_ACTION, org_id, once, {"key_id": created["id"]})
    except ProxyError as exc:
        if exc.status != 400:
            raise
        kept = {k: v for k, v in form.items() if k != "csrf"}
        title, body = await listing(d, org_id, request, visitor.caller, visitor.csrf, exc.message, kept)
        return title, body, 400
    return "New API key", created_page(org_id, created), 201


async def sent_before(d: ConsoleDeps, org_id: str, earlier: Row) -> str:
    """The answer to a create form sent again (a refresh of its result page): the key it made, never the
    key itself; nothing is created."""
    key = await d.directory.get_key(str(earlier["detail"].get("key_id")))
    made = rows(org_id, [key]) if key is not None and key["org_id"] == org_id and earlier["org_id"] == org_id else ""
    return ('<p class="note" id="replayed">This form was sent before: nothing new was created. The key was '
            f'shown once, on the first answer, and is not shown again.</p>{made}'
            f'<p>{link(href(org_id), "Back to the keys")}</p>')


async def change_post(d: ConsoleDeps, visitor: Visitor, org_id: str, request: Request,
                      form: dict[str, str]) -> str | tuple[str, str, int]:
    key_id = path_id(request, "key", "key")
    may_write(visitor.caller.key, "PATCH", f"/admin/keys/{key_id}", href(org_id, key_id))
    try:
        await change(d, org_id, key_id, form, visitor.caller)
    except ProxyError as exc:
        if exc.status != 400:
            raise
        key = await lane(d, visitor.caller, org_id, key_id)
        warn = f'<p class="error" id="error" data-code="{esc(exc.code)}">{esc(exc.message)}</p>'
        kept = {k: v for k, v in form.items() if k != "csrf"}
        return f"API key {key_id}", warn + detail(org_id, key, visitor.csrf, kept), 400
    return href(org_id, key_id)


async def revoke_post(d: ConsoleDeps, visitor: Visitor, org_id: str, request: Request,
                      form: dict[str, str]) -> str:
    key_id = path_id(request, "key", "key")
    may_write(visitor.caller.key, "DELETE", f"/admin/keys/{key_id}", f"{href(org_id, key_id)}/revoke")
    await revoke(d, org_id, key_id, visitor.caller)
    return href(org_id, key_id)


def may_change(caller: Caller) -> bool:
    """PATCH and DELETE /admin/keys/{key} imply the org from the caller's key: one not bound to an org is
    the operator's lane only."""
    return caller.key is None or caller.key.bound_org_id is not None


async def lane(d: ConsoleDeps, caller: Caller, org_id: str, key_id: str, *, change: bool = True) -> Row:
    """PATCH/DELETE /admin/keys/{key}'s lanes for a key of this org's pages (with `change` false, reading
    it: any admin of the org, as GET /admin/keys?org_id= lists it); the key's row."""
    if change and not may_change(caller):
        raise ProxyError.permission("operator_only", "Only the operator changes keys while signed in with a key not "
                                                     "bound to this organization (as the admin API requires).")
    key = await d.directory.get_key(key_id)
    if key is None or key["org_id"] != org_id:
        if caller.is_operator:
            raise ProxyError.not_found("key_not_found", "Unknown API key.")
        raise ProxyError.permission("not_a_member", "That key is not in an organization you administer.")
    return key


async def create(d: ConsoleDeps, org_id: str, form: dict[str, str], caller: Caller) -> Row:
    """POST /admin/keys for this org: its body declaration, its checks, its store call. The row has "key"."""
    body = d.bodies.decode(orjson.dumps({"user_id": form.get("user_id", ""), "org_id": org_id,
                                         "name": text(form, "name", required=False), **_scope_fields(form)}), CreateKey)
    assert isinstance(body, CreateKey)
    if not caller.is_operator and body.user_id != caller.actor:
        member = next((m for m in await d.directory.memberships(body.user_id) if m.org_id == org_id), None)
        if member is None:
            raise member_not_found()
        if member.role == "admin":
            raise ProxyError.permission("operator_only", "Only the operator may create a key for another admin.")
    scope = KeyScope(parse_models(body.models), parse_routes(body.routes), body.read_only, body.limit_millicredits,
                     body.limit_period)
    try:
        return await d.directory.create_key(body.user_id, org_id, body.name or "", caller.actor, scope)
    except ProxyError as exc:
        if caller.is_operator or exc.code not in ("user_not_found", "org_not_found", "not_a_member"):
            raise
        raise member_not_found() from None


async def change(d: ConsoleDeps, org_id: str, key_id: str, form: dict[str, str], caller: Caller) -> None:
    """PATCH /admin/keys/{key} with every field of the form (the form shows the current values)."""
    await lane(d, caller, org_id, key_id)
    sent = {"name": text(form, "name", required=False), **_scope_fields(form)}
    if sent["name"] is None:
        del sent["name"]
    body = d.bodies.decode(orjson.dumps(sent), PatchKey)
    assert isinstance(body, PatchKey)
    changes = {k: getattr(body, k) for k in sent}
    changes["models"] = _list(parse_models(changes["models"]))
    changes["routes"] = _list(parse_routes(changes["routes"]))
    key_hash = await d.directory.update_key(key_id, changes, caller.actor)
    if key_hash is None:  # pragma: no cover - keys are never deleted
        raise ProxyError.not_found("key_not_found", "Unknown API key.")
    await broadcast(d, key_hash, "changed")


async def revoke(d: ConsoleDeps, org_id: str, key_id: str, caller: Caller) -> None:
    await lane(d, caller, org_id, key_id)
    key_hash = await d.directory.revoke_key(key_id, caller.actor)
    if key_hash is None:  # pragma: no cover - keys are never deleted
        raise ProxyError.not_found("key_not_found", "Unknown API key.")
    await broadcast(d, key_hash, "revoked")


async def broadcast(d: ConsoleDeps, key_hash: str, done: str) -> None:
    """The admin API's broadcast (PeopleRoutes._broadcast): the change is stored; a failed broadcast is 503."""
    try:
        await d.on_revoke(key_hash)
    except Exception as exc:
        log.warning("key broadcast failed: %s", type(exc).__name__)
        raise ProxyError(503, "service_unavailable", "revocation_not_broadcast",
                         f"The key is {done} but not every replica could be told yet; send the form again.") from None


def _list(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)
