"""An org's overview (pool, grants, burn rate, members and their allocations) and its usage charts.

The numbers are the admin API's: the pool is `ledger.pool`, members and allocations are what
GET /admin/orgs/{org} composes (the same store calls), usage is `ledger.usage` with the route's groups.
The burn rate is the charged total of the last `BURN_DAYS` whole UTC days and today, per day, and the
run-out day is when the available credit lasts at that rate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request

from proxy.api.jsonapi import query_choice
from proxy.console import charts
from proxy.console.deps import ConsoleDeps
from proxy.console.html import amount, cell, count, esc, facts, link, money, table
from proxy.db.pool import Row
from proxy.errors import ProxyError

BURN_DAYS = 7
CHART_BARS = 20
MAX_GROUPS = 1000  # as the admin API answers usage groups (proxy/api/usage.py)
HORIZON_DAYS = 100 * 365
WINDOWS = ("7", "30", "90")


def org_not_found() -> ProxyError:
    return ProxyError.not_found("org_not_found", "Unknown organization.")


def day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def org_detail(d: ConsoleDeps, org_id: str) -> Row:
    """GET /admin/orgs/{org}'s body, from the same store calls (proxy/admin/orgs.py, OrgRoutes.get)."""
    org = await d.directory.get_org(org_id)
    if org is None:
        raise org_not_found()
    allocations = await d.ledger.allocations(org_id)
    members = []
    for member in org["members"]:
        allocation = allocations.get(member["user_id"])
        if allocation is None:  # joined between the two reads: read it as their own /v1/credits does
            allocation = (await d.ledger.credits(org_id, member["user_id"]))["allocation"]
        members.append({**member, "allocation": allocation})
    return {**org, "members": members, "pool": await d.ledger.pool(org_id)}


def burn(day_rows: list[Row], available: int, now: datetime) -> tuple[int, str]:
    """(millicredits per day over the window, the run-out sentence)."""
    total = sum(int(r["charged_millicredits"] or 0) for r in day_rows)
    per_day = total // BURN_DAYS
    if total <= 0:
        return 0, "No spend in the last 7 days: the pool does not run out at this rate."
    if available <= 0:
        return per_day, "The pool has no credit available."
    seconds = available * BURN_DAYS * 86400 // total
    if seconds >= HORIZON_DAYS * 86400:  # a date that far is noise (and past year 9999 not a date at all)
        return per_day, f"At this rate the pool lasts more than {HORIZON_DAYS // 365} years."
    runs_out = now + timedelta(seconds=seconds)
    days = seconds // 86400
    return per_day, f"At this rate the pool runs out on {runs_out:%Y-%m-%d} (in {days} day{'' if days == 1 else 's'})."


async def overview(d: ConsoleDeps, org_id: str, request: Request) -> tuple[str, str]:
    detail = await org_detail(d, org_id)
    pool = detail["pool"]
    now = d.now()
    start = day_start(now) - timedelta(days=BURN_DAYS - 1)
    days = list(await d.ledger.usage(org_id, group_by="day", user_id=None, start=start, end=None))
    per_day, runs_out = burn(days, int(pool["available"]), now)
    grants = await d.reads.grants(org_id)
    summary = facts([
        ("Tier", esc(detail["tier"])), ("Suspended", "yes" if detail["suspended"] else "no"),
        ("Balance", amount(pool["balance"], "pool-balance")), ("Held", amount(pool["held"], "pool-held")),
        ("Available", amount(pool["available"], "pool-available")),
        ("Granted", amount(pool["granted"], "pool-granted")), ("Overage", amount(pool["overage"], "pool-overage")),
        ("Burn rate (7-day average)", amount(per_day, "burn-rate") + " per day"),
        ("Runs out", f'<span id="runs-out">{esc(runs_out)}</span>'),
    ], name="pool")
    members = table(
        ["Member", "Email", "Role", "Limit", "Period", "Used", "Held", "Remaining", "Resets", "Suspended"],
        (f'<td data-user="{esc(m["user_id"])}">{esc(m["name"] or m["user_id"])}</td>{cell(m["email"])}'
         f'{cell(m["role"])}{money(m["allocation"]["limit"])}{cell(m["allocation"]["period"])}'
         f'{money(m["allocation"]["used"])}{money(m["allocation"]["held"])}{money(m["allocation"]["available"])}'
         f'{cell(m["allocation"]["resets_at"])}{cell("yes" if m["suspended"] else "no")}'
         for m in detail["members"]), name="members", empty="No members yet.")
    grant_rows = table(
        ["Grant", "Kind", "Amount", "Reason", "By", "Created", "Expires", "Expired", "Forfeited"],
        (f'{cell(g["id"])}{cell(g["kind"])}{money(g["amount"])}{cell(g["reason"])}{cell(g["actor"])}'
         f'{cell(g["created_at"])}{cell(g["expires_at"] or "never")}{cell(g["expired_at"])}{money(g["forfeited"])}'
         for g in grants), name="grants", empty="No grants yet.")
    body = (f"<section><h2>Pool</h2>{summary}</section><section><h2>Members this period</h2>{members}</section>"
            f"<section><h2>Grants and adjustments</h2>{grant_rows}</section>")
    return f"{detail['name']}", body


def _window(request: Request, now: datetime) -> tuple[int, datetime, datetime]:
    days = int(query_choice(request.query_params, "days", WINDOWS, "30"))
    start = day_start(now) - timedelta(days=days - 1)
    return days, start, day_start(now) + timedelta(days=1)


def _day_labels(start: datetime, days: int) -> list[str]:
    return [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)]


def _charged(row: Row | None) -> int:
    return int((row or {}).get("charged_millicredits") or 0)


async def _ranked(d: ConsoleDeps, org_id: str, group: str, start: datetime, end: datetime,
                  label: Callable[[Any], str], title: str) -> str:
    """One group's section: its biggest spenders as bars (at most CHART_BARS), every group in the table
    (at most MAX_GROUPS, as the admin API answers; the page says when there are more)."""
    rows = list(await d.ledger.usage(org_id, group_by=group, user_id=None, start=start, end=end, limit=MAX_GROUPS))
    more = len(rows) > MAX_GROUPS
    ranked = sorted(rows[:MAX_GROUPS], key=lambda r: -_charged(r))
    bars = [(label(r[group]), _charged(r)) for r in ranked[:CHART_BARS]]
    note = f'<p class="note">Only the first {MAX_GROUPS:,} groups are shown.</p>' if more else ""
    return (f"<section><h2>{esc(title)}</h2>"
            f"{charts.rows(f'chart-{group}', f'Credits charged {title.lower()}', bars, charts.credits_fmt)}"
            f"{_usage_table(f'usage-{group}', group, ranked)}{note}</section>")


async def usage(d: ConsoleDeps, org_id: str, request: Request) -> tuple[str, str]:
    detail = await org_detail(d, org_id)
    days, start, end = _window(request, d.now())
    by_day = {r["day"]: r for r in await d.ledger.usage(org_id, group_by="day", user_id=None, start=start, end=end)}
    split = await d.reads.platform_and_byok(org_id, start, end)
    labels = _day_labels(start, days)
    names = {m["user_id"]: m["email"] for m in detail["members"]}

    def split_of(byok: bool) -> list[int]:
        found = {r["day"]: int(r["requests"]) for r in split if r["byok"] is byok}
        return [found.get(label, 0) for label in labels]

    def plain(value: Any) -> str:
        return "(none)" if value is None else str(value)

    choose = " ".join(link(f"/console/orgs/{org_id}/usage", f"{n} days", days=n) for n in WINDOWS)
    per_day = charts.columns("chart-day", "Credits charged per day", labels,
                             [("charged", [_charged(by_day.get(x)) for x in labels])], charts.credits_fmt)
    byok = charts.columns("chart-byok", "Requests per day", labels,
                          [("platform", split_of(False)), ("BYOK", split_of(True))])
    sections = [await _ranked(d, org_id, "model", start, end, plain, "By model"),
                await _ranked(d, org_id, "user", start, end, lambda u: str(names.get(u) or u), "By member"),
                await _ranked(d, org_id, "end_user", start, end, plain, "By end user"),
                await _ranked(d, org_id, "tag", start, end, plain, "By tag"),
                await _ranked(d, org_id, "power_level", start, end, plain, "By power level")]
    body = (
        f'<p class="window">Window: <span id="window">{esc(labels[0])} to {esc(labels[-1])}</span> (UTC days). '
        f"Show: {choose}</p>"
        f"<section><h2>Charged per day</h2>{per_day}</section>"
        f"<section><h2>Requests per day: platform and BYOK</h2>{byok}"
        f"<p>BYOK requests run on the member's or org's own provider key and are never charged to the pool.</p>"
        f"</section>{''.join(sections)}"
        f"<section><h2>By day</h2>{_usage_table('usage-day', 'day', [by_day[x] for x in labels if x in by_day])}"
        f"</section><p class=\"note\">End users are the OpenAI <code>user</code> field of each request; a request "
        f"counts once under each of its tags. A request's power level is the level that served it (after a downgrade, "
        f"the lower one; none: the request named a model, not a level).</p>"
    )
    return f"{detail['name']}: usage", body


def _usage_table(name: str, key: str, rows: list[Row]) -> str:
    def line(r: dict[str, Any]) -> str:
        shown = "(none)" if r[key] is None else r[key]
        return (f'<td data-key="{esc(r[key])}">{esc(shown)}</td>{count(r["requests"])}{count(r["prompt_tokens"])}'
                f'{count(r["completion_tokens"])}{money(r["charged_millicredits"])}{money(r["list_price_millicredits"])}')

    headings = [key.replace("_", " ").capitalize(), "Requests", "Prompt tokens", "Completion tokens", "Charged",
                "List price"]
    return table(headings,
                 (line(r) for r in rows), name=name, empty="No usage in this window.")
