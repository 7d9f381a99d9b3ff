"""The operator's onboarding form: org, grant, user, member with allocation, and an API key, in one post.

Each step is the admin API's own: the form's fields are decoded through the same body declarations
(CreateOrg, Grant, CreateUser, PutMember, CreateKey: the same 400s) and written through the same store
calls, each audited with the operator as actor (the grant's audit line is written here, as the grant route
writes it). Everything that can be checked before the first write is checked first: every field, the
expiry in the future, and whether the email already belongs to a user (then that user is reused). The
stores have no transaction across steps, so a step that still fails (the database gone mid-way) stops
the run and the page says which step failed and what had been created. The new key is in this answer's
page only (never in a URL, never stored in clear).

Sending the form twice (a refresh of the result page re-posts it, a double click) creates nothing twice:
each form carries a one-time token (`once`); runs with the same token take turns (a PostgreSQL advisory
lock), the first records the token in the audit log (`console.onboard`, with the new org) right after
creating the org, and a later post with that token finds it and shows what exists under that org (its
ids, never the key) instead of running again. The grant's idempotency key is the token too.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal

import orjson

from proxy.admin.input import email as clean_email
from proxy.api.bodies import CreateKey, CreateOrg, CreateUser, Grant, PutMember
from proxy.console.deps import ConsoleDeps
from proxy.console.forms import text
from proxy.console.html import choice, esc, hidden, link
from proxy.console.html import field as input_field
from proxy.db.pool import Row
from proxy.errors import ProxyError

ROLES = ("member", "admin")
PERIODS = ("month", "week", "day", "none")
_CREDITS = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,3})?")
_ONCE = re.compile(r"[A-Za-z0-9_-]{22,64}")
AUDIT_ACTION = "console.onboard"


def form_page(d: ConsoleDeps, csrf: str, values: dict[str, str] | None = None, problem: str = "") -> str:
    v = values or {}
    warn = f'<p class="error" id="error">{esc(problem)}</p>' if problem else ""
    return (
        f'{warn}<form method="post" action="/console/onboard" class="stack" id="onboard">{hidden("csrf", csrf)}'
        f'{hidden("once", v.get("once") or secrets.token_urlsafe(24))}'
        f"<fieldset><legend>Organization</legend>{input_field('Name', 'org_name', value=v.get('org_name', ''), required=True)}"  # noqa: E501
        f"{choice('Tier', 'tier', d.tiers, v.get('tier'))}</fieldset>"
        f"<fieldset><legend>Grant</legend>{input_field('Credits', 'grant_credits', value=v.get('grant_credits', ''), required=True, extra=' inputmode=decimal')}"  # noqa: E501
        f"{input_field('Expires (UTC day, optional)', 'grant_expires', kind='date', value=v.get('grant_expires', ''))}</fieldset>"  # noqa: E501
        f"<fieldset><legend>User</legend>{input_field('Email', 'email', kind='email', value=v.get('email', ''), required=True)}"  # noqa: E501
        f"{input_field('Name', 'user_name', value=v.get('user_name', ''))}</fieldset>"
        f"<fieldset><legend>Membership</legend>{choice('Role', 'role', ROLES, v.get('role'))}"
        f"{input_field('Allocation in credits (empty: unlimited within the pool)', 'allocation_credits', value=v.get('allocation_credits', ''), extra=' inputmode=decimal')}"  # noqa: E501
        f"{choice('Period', 'period', PERIODS, v.get('period'))}</fieldset>"
        f"<fieldset><legend>API key</legend>{input_field('Key name', 'key_name', value=v.get('key_name', 'default'))}</fieldset>"  # noqa: E501
        f'<button type="submit">Create everything</button></form>'
    )


def one_time(form: dict[str, str]) -> str:
    """The form's one-time token (`once`): random, put in the form when it is shown."""
    once = form.get("once", "")
    if not _ONCE.fullmatch(once):
        raise ProxyError.invalid_value("once", "This form has expired; reload the page and retry.")
    return once


def millicredits(raw: str, name: str) -> int:
    """Credits as typed ("12.5") to integer millicredits, exactly; at most three decimals."""
    problem = ProxyError.invalid_value(name, f"'{name}' must be a number of credits with at most 3 decimals.")
    if not _CREDITS.fullmatch(raw.replace(",", "")):
        raise problem
    milli = Decimal(raw.replace(",", "")) * 1000
    if milli != milli.to_integral_value():
        raise problem
    return int(milli)


@dataclass
class Plan:
    org: CreateOrg
    amount: int
    expires_at: datetime | None
    user: CreateUser
    member: PutMember
    key_name: str
    once: str


@dataclass
class Outcome:
    created: list[tuple[str, str]] = field(default_factory=list)  # (what, markup)
    failed_step: str | None = None
    error: ProxyError | None = None
    key: str | None = None
    org_id: str | None = None
    replayed: bool = False  # the form had been sent before: `created` is what exists, nothing was run


def _decode(d: ConsoleDeps, struct: type, body: Row) -> object:
    return d.bodies.decode(orjson.dumps(body), struct)


def plan(d: ConsoleDeps, form: dict[str, str], now: datetime) -> Plan:
    """Every field checked through the admin API's declarations before anything is written."""
    once = one_time(form)
    org = _decode(d, CreateOrg, {"name": text(form, "org_name"), "tier": form.get("tier", "")})
    amount = millicredits(text(form, "grant_credits", limit=30) or "", "grant_credits")
    expires_at = None
    raw_expiry = text(form, "grant_expires", required=False, limit=10)
    if raw_expiry is not None:
        try:
            expires_at = datetime.combine(date.fromisoformat(raw_expiry), time(), UTC)
        except ValueError:
            raise ProxyError.invalid_value("grant_expires", "'grant_expires' must be a date (YYYY-MM-DD).") from None
        if expires_at <= now:
            raise ProxyError.invalid_value("grant_expires", "'grant_expires' must be in the future.")
    _decode(d, Grant, {"amount_millicredits": amount, "reason": "onboarding", "idempotency_key": "onboard"})
    user = _decode(d, CreateUser, {"email": text(form, "email", limit=254),
                                   "name": text(form, "user_name", required=False)})
    raw_alloc = text(form, "allocation_credits", required=False, limit=30)
    member = _decode(d, PutMember, {
        "role": form.get("role", ""), "allocation_period": form.get("period", ""),
        "allocation_millicredits": None if raw_alloc is None else millicredits(raw_alloc, "allocation_credits")})
    key_name = text(form, "key_name", required=False) or "default"
    _decode(d, CreateKey, {"user_id": "usr_x", "name": key_name})
    assert isinstance(org, CreateOrg) and isinstance(user, CreateUser) and isinstance(member, PutMember)
    return Plan(org, amount, expires_at, user, member, key_name, once)


async def run(d: ConsoleDeps, p: Plan, actor: str) -> Outcome:
    """The steps, unless this form's token ran them before (then what that run made, read again)."""
    async with d.reads.exclusive(f"{AUDIT_ACTION}:{p.once}"):
        earlier = await d.reads.audited(AUDIT_ACTION, p.once)
        if earlier is not None:
            return await replay(d, str(earlier["org_id"]))
        return await _steps(d, p, actor)


async def replay(d: ConsoleDeps, org_id: str) -> Outcome:
    """What exists under the org an earlier post of the same form created: ids and prefixes, no key."""
    out = Outcome(org_id=org_id, replayed=True)
    org = await d.directory.get_org(org_id)
    if org is None:  # pragma: no cover - orgs are never deleted
        return out
    out.created.append(("Organization", link(f"/console/orgs/{org_id}", f"{org['name']} ({org_id})")))
    for g in await d.reads.grants(org_id):
        out.created.append(("Grant", f'<span data-mc="{int(g["amount"])}">{esc(g["id"])}: '
                                     f'{int(g["amount"]):,} millicredits</span>'))
    for m in org["members"]:
        out.created.append(("Member", esc(f"{m['user_id']} as {m['role']}")))
    keys, _ = await d.directory.list_keys(None, org_id, 100, None)
    for k in keys:
        out.created.append(("API key", esc(f"{k['id']} ({k['prefix']}…)")))
    return out


async def _steps(d: ConsoleDeps, p: Plan, actor: str) -> Outcome:
    """The five steps in order; the first failure stops the run (what was created stays, and is listed)."""
    out = Outcome()
    step = "checking the email"
    try:
        address = clean_email(p.user.email)
        existing, _ = await d.directory.list_users(1, None, address)
        step = "creating the organization"
        org = await d.directory.create_org(p.org.name, p.org.tier, actor)
        out.org_id = org_id = str(org["id"])
        out.created.append(("Organization", link(f"/console/orgs/{org_id}", f"{org['name']} ({org_id})")))
        await d.directory.audit(actor, AUDIT_ACTION, org_id, p.once, {"org_id": org_id})
        step = "granting credit"
        key = f"onboarding-{p.once}"
        await d.ledger.grant(org_id, p.amount, "onboarding", key, p.expires_at, actor)
        detail = {"amount_millicredits": p.amount, "reason": "onboarding", "idempotency_key": key,
                  "expires_at": p.expires_at}
        await d.directory.audit(actor, "org.grant", org_id, key, detail)
        out.created.append(("Grant", f'<span data-mc="{p.amount}">{p.amount:,} millicredits</span>'))
        step = "creating the user"
        if existing:
            user_id = str(existing[0]["id"])
            out.created.append(("User (already existed, reused)", esc(f"{address} ({user_id})")))
        else:
            user = await d.directory.create_user(address, p.user.name or "", actor)
            user_id = str(user["id"])
            out.created.append(("User", esc(f"{address} ({user_id})")))
        step = "adding the member"
        fields = {"role": p.member.role, "allocation_millicredits": p.member.allocation_millicredits,
                  "allocation_period": p.member.allocation_period}
        await d.directory.put_member(org_id, user_id, fields, actor)
        out.created.append(("Member", esc(f"{user_id} as {p.member.role}")))
        step = "creating the API key"
        created = await d.directory.create_key(user_id, org_id, p.key_name, actor)
        out.key = str(created["key"])
        out.created.append(("API key", esc(f"{created['id']} ({created['prefix']}…)")))
    except ProxyError as exc:
        out.failed_step, out.error = step, exc
    return out


def result_page(out: Outcome) -> str:
    done = "".join(f"<li><strong>{esc(what)}</strong>: {markup}</li>" for what, markup in out.created)
    listed = f'<ul id="created">{done}</ul>' if done else '<p id="created">Nothing was created.</p>'
    if out.replayed:
        return ('<p class="note" id="replayed">This form was sent before: nothing new was created. The API key '
                f"was shown once, on the first answer, and is not shown again.</p><h2>Created then</h2>{listed}"
                f'<p>{link(f"/console/orgs/{out.org_id}", "Open the organization")}</p>')
    if out.error is not None:
        return (f'<p class="error" id="error" data-step="{esc(out.failed_step)}">Failed while {esc(out.failed_step)}: '
                f"{esc(out.error.message)}</p><h2>Created before the failure</h2>{listed}"
                f'<p>{link("/console/onboard", "Back to the form")}</p>')
    return (f"<h2>Created</h2>{listed}<h2>The API key</h2>"
            f'<p class="once">Copy it now: it is shown on this page only, and never again.</p>'
            f'<pre id="new-key">{esc(out.key)}</pre>'
            f'<p>{link(f"/console/orgs/{out.org_id}", "Open the organization")}</p>')
