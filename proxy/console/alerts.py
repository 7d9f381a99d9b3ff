"""An org's budget alerts: the thresholds (pool and allocation) and the alerts fired, and the form that
changes the thresholds.

Both come from the admin API's store (proxy/export/alerts.py, through `ConsoleDeps.alerts`), exactly what
GET /admin/orgs/{org}/alerts and GET /admin/orgs/{org}/alert-thresholds answer. A change goes through
PUT /admin/orgs/{org}/alert-thresholds's body declaration (`PutAlertThresholds`: the same 400s) and the
same store call, and is audited the same way (`org.alert_thresholds`, with the caller as actor). The form
always sends both scopes: its fields show the current percents, and an empty field turns that scope's
alerts off, as an empty list does on the API.
"""

from __future__ import annotations

import re

import orjson
from starlette.requests import Request

from proxy.api.bodies import PutAlertThresholds
from proxy.api.jsonapi import page as paging
from proxy.console.deps import ConsoleDeps
from proxy.console.forms import text
from proxy.console.guard import Visitor, may_write
from proxy.console.html import cell, esc, facts, field, hidden, link, money, table
from proxy.console.pages import org_not_found
from proxy.db.pool import serial_cursor
from proxy.errors import ProxyError

SCOPES = ("pool", "allocation")
_PERCENTS = re.compile(r"[0-9]{1,6}(?:[ ,]+[0-9]{1,6})*")


def percents(form: dict[str, str], name: str) -> list[int]:
    """"50, 80 100" -> [50, 80, 100]; empty -> [] (that scope off). Ranges are the body declaration's."""
    raw = (text(form, name, required=False) or "").strip(" ,")
    if not raw:
        return []
    if not _PERCENTS.fullmatch(raw):
        raise ProxyError.invalid_value(name, f"'{name}' must be whole percents separated by commas.")
    return [int(p) for p in re.split(r"[ ,]+", raw)]


def _shown(levels: list[int]) -> str:
    return ", ".join(str(p) for p in levels)


def form(org_id: str, csrf: str, values: dict[str, str], problem: str = "") -> str:
    warn = f'<p class="error" id="error">{esc(problem)}</p>' if problem else ""
    return (f'{warn}<form method="post" action="/console/orgs/{esc(org_id)}/alert-thresholds" class="stack" '
            f'id="thresholds-form">{hidden("csrf", csrf)}'
            f"{field('Pool thresholds (% of granted credit spent or held)', 'pool', value=values.get('pool', ''))}"
            f"{field('Allocation thresholds (% of a member’s limit used or held)', 'allocation', value=values.get('allocation', ''))}"  # noqa: E501
            '<p class="note">Whole percents from 1 to 100, at most 10 per scope; an empty field turns that '
            "scope's alerts off.</p><button type=\"submit\">Save thresholds</button></form>")


async def view(d: ConsoleDeps, org_id: str, request: Request, csrf: str, problem: str = "",
               typed: dict[str, str] | None = None) -> tuple[str, str]:
    org = await d.directory.get_org(org_id)
    if org is None:
        raise org_not_found()
    limit, after = paging(request.query_params, serial_cursor)
    current = await d.alerts.thresholds(org_id)
    rows, has_more = await d.alerts.alerts(org_id, limit, after)
    levels = facts([(f"{scope.capitalize()}", f'<span id="thresholds-{scope}">{esc(_shown(current[scope]) or "off")}'
                     "</span>") for scope in SCOPES], name="thresholds")
    fired = table(
        ["Alert", "Scope", "Member", "Threshold", "Used", "Budget", "Period from", "Fired"],
        (f'{cell(a["id"])}{cell(a["scope"])}{cell(a["user_id"])}<td class="num" data-n="{int(a["threshold"])}">'
         f'{int(a["threshold"])}%</td>{money(a["used_millicredits"])}{money(a["budget_millicredits"])}'
         f'{cell(a["period_start"])}{cell(a["fired_at"])}' for a in rows), name="alerts", empty="No alerts fired yet.")
    more = (f'<p class="more">{link(f"/console/orgs/{org_id}/alerts", "Older →", after=str(rows[-1]["id"]), limit=str(limit))}</p>'  # noqa: E501
            if has_more and rows else "")
    # a refused change keeps what was typed
    editor = form(org_id, csrf, typed if typed is not None else {s: _shown(current[s]) for s in SCOPES}, problem)
    body = (f"<section><h2>Thresholds</h2>{levels}{editor}</section>"
            f"<section><h2>Alerts fired</h2>{fired}{more}</section>")
    return f"{org['name']}: budget alerts", body


async def change(d: ConsoleDeps, org_id: str, form_data: dict[str, str], actor: str) -> dict[str, list[int]]:
    """The PUT's validation, store call and audit line; returns the thresholds now stored."""
    body = d.bodies.decode(orjson.dumps({s: percents(form_data, s) for s in SCOPES}), PutAlertThresholds)
    assert isinstance(body, PutAlertThresholds)
    if await d.directory.get_org(org_id) is None:
        raise org_not_found()
    pool = body.pool if isinstance(body.pool, list) else []
    allocation = body.allocation if isinstance(body.allocation, list) else []
    row = await d.alerts.set_thresholds(org_id, pool, allocation)
    await d.directory.audit(actor, "org.alert_thresholds", org_id, org_id, row)
    return {s: list(row[s]) for s in SCOPES}


async def page(d: ConsoleDeps, visitor: Visitor, org_id: str, request: Request) -> tuple[str, str]:
    return await view(d, org_id, request, visitor.csrf)


async def post(d: ConsoleDeps, visitor: Visitor, org_id: str, request: Request,
               form_data: dict[str, str]) -> str | tuple[str, str, int]:
    """The threshold form: saved, back to the alerts page (303); refused input, the page again with it (400)."""
    may_write(visitor.caller.key, "PUT", f"/admin/orgs/{org_id}/alert-thresholds",
              f"/console/orgs/{org_id}/alert-thresholds")
    try:
        await change(d, org_id, form_data, visitor.caller.actor)
    except ProxyError as exc:
        if exc.status != 400:
            raise
        typed = {s: form_data.get(s, "") for s in SCOPES}
        return (*await view(d, org_id, request, visitor.csrf, exc.message, typed), 400)
    return f"/console/orgs/{org_id}/alerts"
