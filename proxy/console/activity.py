"""An org's activity: recent requests and holds in flight, one request's detail, the ledger (its API keys
are proxy/console/keys.py).

The ledger comes from the admin API's store call with its paging (`limit`, `after` = the last row's id,
validated the same way); the request detail is GET /v1/requests/{id}'s record (`ledger.request`).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from starlette.requests import Request

from proxy.api.jsonapi import page, query_id
from proxy.console.deps import ConsoleDeps
from proxy.console.html import amount, cell, count, esc, facts, link, money, table
from proxy.console.pages import org_not_found
from proxy.db.pool import Row, serial_cursor
from proxy.errors import ProxyError


def request_href(org_id: str, request_id: str) -> str:
    return f"/console/orgs/{org_id}/requests/{quote(request_id, safe='')}"


def _more(base: str, rows: Sequence[Row], has_more: bool, **keep: str | None) -> str:
    if not has_more or not rows:
        return ""
    return f'<p class="more">{link(base, "Older →", after=str(rows[-1]["id"]), **keep)}</p>'


async def _existing(d: ConsoleDeps, org_id: str) -> Row:
    org = await d.directory.get_org(org_id)
    if org is None:
        raise org_not_found()
    return org


async def requests(d: ConsoleDeps, org_id: str, request: Request) -> tuple[str, str]:
    org = await _existing(d, org_id)
    limit, after = page(request.query_params, serial_cursor)
    user_id = query_id(request.query_params, "user_id", "usr")
    rows, has_more = await d.reads.requests(org_id, limit=limit, after=after, user_id=user_id)
    flying = await d.reads.in_flight(org_id)
    recent = table(
        ["Request", "Member", "Model", "Status", "Source", "BYOK", "Held", "Charged", "Prompt", "Completion", "At"],
        (f'<td>{link(request_href(org_id, r["request_id"]), r["request_id"])}</td>{cell(r["user_id"])}'
         f'{cell(r["model"])}{cell(r["state"])}{cell(r["usage_source"])}{cell("yes" if r["byok"] else "no")}'
         f'{money(r["amount"])}{money(r["charged"])}{count(r["prompt_tokens"])}{count(r["completion_tokens"])}'
         f'{cell(r["created_at"])}' for r in rows), name="requests", empty="No requests yet.")
    holds = table(
        ["Request", "Member", "Model", "BYOK", "Held", "Streamed tokens", "Since", "Expires"],
        (f'<td>{link(request_href(org_id, h["request_id"]), h["request_id"])}</td>{cell(h["user_id"])}'
         f'{cell(h["model"])}{cell("yes" if h["byok"] else "no")}{money(h["amount"])}{count(h["streamed_tokens"])}'
         f'{cell(h["created_at"])}{cell(h["expires_at"])}' for h in flying), name="holds", empty="No holds in flight.")
    more = _more(f"/console/orgs/{org_id}/requests", rows, has_more, user_id=user_id, limit=str(limit))
    body = (f"<section><h2>Holds in flight</h2>{holds}</section>"
            f"<section><h2>Recent requests</h2>{recent}{more}</section>")
    return f"{org['name']}: requests", body


async def request_detail(d: ConsoleDeps, org_id: str, request_id: str) -> tuple[str, str]:
    if not request_id or len(request_id) > 512:
        raise ProxyError.invalid_value("request_id", "'request_id' must be 1 to 512 characters.")
    org = await _existing(d, org_id)
    record = await d.ledger.request(org_id, request_id)
    if record is None:
        raise ProxyError.not_found("request_not_found", "No request with this id in this organization.")
    pairs = [("Request id", f'<code id="request-id">{esc(record["request_id"])}</code>'),
             ("Status", f'<span id="status">{esc(record["status"])}</span>'),
             ("Member", esc(record["user_id"])), ("Model", esc(record["model"])),
             ("Usage source", f'<span id="usage-source">{esc(record["usage_source"] or "—")}</span>'),
             ("BYOK", "yes" if record["byok"] else "no"),
             ("Prompt tokens", esc(record["prompt_tokens"])), ("Completion tokens", esc(record["completion_tokens"])),
             ("Held", amount(record["held_millicredits"], "held")),
             ("Charged", amount(record["charged_millicredits"], "charged")),
             ("List price", amount(record["list_price_millicredits"], "list-price")),
             ("Price version", esc(record.get("price_version") or "—"))]
    entries = f'<p>{link(f"/console/orgs/{org_id}/ledger", "Ledger", user_id=record["user_id"])}</p>'
    return f"{org['name']}: request", facts(pairs, name="request") + entries


async def ledger(d: ConsoleDeps, org_id: str, request: Request) -> tuple[str, str]:
    org = await _existing(d, org_id)
    user_id = query_id(request.query_params, "user_id", "usr")
    limit, after = page(request.query_params, serial_cursor)
    rows, has_more = await d.ledger.entries(org_id, user_id=user_id, limit=limit, after=after)
    entries = table(
        ["Entry", "Kind", "Amount", "Balance Δ", "Held Δ", "Request", "Member", "By", "Reason", "At"],
        (f'{cell(e["id"])}{cell(e["kind"])}{money(e["amount_millicredits"])}{money(e["balance_delta"])}'
         f'{money(e["held_delta"])}'
         f'<td>{link(request_href(org_id, e["request_id"]), e["request_id"]) if e["request_id"] else "—"}</td>'
         f'{cell(e["user_id"])}{cell(e["actor"])}{cell(e["reason"])}{cell(e["created_at"])}' for e in rows),
        name="ledger", empty="No entries.")
    more = _more(f"/console/orgs/{org_id}/ledger", rows, has_more, user_id=user_id, limit=str(limit))
    everyone = link(f"/console/orgs/{org_id}/ledger", "All entries")
    who = f"<p>Entries of {esc(user_id)} only. {everyone}</p>" if user_id else ""
    return f"{org['name']}: ledger", who + entries + more
