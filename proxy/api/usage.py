"""What the caller's and the admin's usage routes share: the attribution filters, the bound on groups, and
the CSV download (`GET /v1/usage.csv`, `GET /admin/orgs/{org}/usage.csv`).

Filters: `end_user` (the OpenAI `user` the requests carried, at most 256 characters) and `tag` (one
X-Tags tag, a safe token of at most 64 characters); anything else is 400 `invalid_value` naming it. A
grouped answer has at most `MAX_GROUPS` groups; `has_more` says the period or the filters should narrow.

The CSV: one row per usage record in [start, end) (both required, at most `MAX_CSV_DAYS` days apart),
oldest first, streamed page by page (`PAGE_ROWS` records per short query, never the whole period in
memory nor a connection held while the client reads). Cells are RFC 4180 (quoted when needed, CRLF lines);
a text cell that a spreadsheet would read as a formula (starting with = + - @, a tab or a carriage return)
is prefixed with `'` (CSV injection). Times are RFC 3339 UTC with microseconds; tags are joined by `;`;
byok is `true` / `false`; a missing value is an empty cell. The first page is read before the answer
starts, so a bad request or an unreachable ledger is still the contract's JSON error; a failure after
that cuts the download short (the client sees an incomplete chunked body, never a partial file as whole).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response, StreamingResponse

from proxy.api.jsonapi import time_window
from proxy.api.stores import LedgerAdmin
from proxy.db.pool import Row
from proxy.errors import ProxyError
from proxy.gateway.attribution import MAX_END_USER_CHARS, MAX_TAG_CHARS, TAG

MAX_GROUPS = 1000
MAX_CSV_DAYS = 93  # a quarter, with room for its longest months
PAGE_ROWS = 1000
CSV_COLUMNS = ("request_id", "recorded_at", "user_id", "key_id", "end_user", "tags", "model", "prompt_tokens",
               "completion_tokens", "charged_millicredits", "list_price_millicredits", "usage_source", "byok",
               "price_version")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def attribution_filters(params: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(`end_user`, `tag`) query filters, each optional. Control characters were refused before (check_params)."""
    end_user, tag = params.get("end_user"), params.get("tag")
    if end_user is not None and not 1 <= len(end_user) <= MAX_END_USER_CHARS:
        raise ProxyError.invalid_value("end_user", f"'end_user' must be 1 to {MAX_END_USER_CHARS} characters.")
    if tag is not None and not TAG.fullmatch(tag):
        raise ProxyError.invalid_value("tag", f"'tag' must be 1 to {MAX_TAG_CHARS} of the characters "
                                              "A-Z a-z 0-9 . _ : -.")
    return end_user, tag


def bounded(rows: Sequence[Row]) -> tuple[list[Row], bool]:
    """The groups to answer (at most MAX_GROUPS) and whether there were more (a query with limit=MAX_GROUPS)."""
    return list(rows[:MAX_GROUPS]), len(rows) > MAX_GROUPS


def csv_window(params: Mapping[str, str]) -> tuple[datetime, datetime]:
    """The download's period [start, end): both required, end after start, at most MAX_CSV_DAYS days."""
    start, end = time_window(params)
    if start is None:
        raise ProxyError.missing_field("start")
    if end is None:
        raise ProxyError.missing_field("end")
    if end - start > timedelta(days=MAX_CSV_DAYS):
        raise ProxyError.invalid_value("end", f"The period may span at most {MAX_CSV_DAYS} days.")
    return start, end


def cell(value: Any) -> str:
    """One CSV cell: numbers as they are, booleans as true/false, None empty, times RFC 3339 UTC, lists joined
    by ';'; text a spreadsheet would run as a formula gets a leading `'`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = ";".join(value) if isinstance(value, list) else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_lines(rows: Sequence[Row], *, header: bool = False) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    writer.writerows([cell(row[name]) for name in CSV_COLUMNS] for row in rows)
    return out.getvalue().encode()


async def usage_csv(ledger: LedgerAdmin, org_id: str, user_id: str | None, params: Mapping[str, str],
                    filename: str) -> Response:
    """The CSV download of `org_id`'s usage records (one member's with `user_id`) as the query asks."""
    start, end = csv_window(params)
    end_user, tag = attribution_filters(params)

    async def page(after: tuple[datetime, str] | None) -> Sequence[Row]:
        return await ledger.usage_records(org_id, user_id=user_id, start=start, end=end, end_user=end_user,
                                          tag=tag, after=after, limit=PAGE_ROWS)

    first = await page(None)  # before the answer starts: its errors are still JSON

    async def body() -> AsyncIterator[bytes]:
        rows = first
        yield csv_lines(rows, header=True)
        while len(rows) == PAGE_ROWS:
            rows = await page((rows[-1]["recorded_at"], rows[-1]["request_id"]))
            if rows:
                yield csv_lines(rows)

    stamp = "%Y%m%dT%H%M%SZ"
    name = f"usage_{filename}_{start.strftime(stamp)}_{end.strftime(stamp)}.csv"
    return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
        "content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"})
