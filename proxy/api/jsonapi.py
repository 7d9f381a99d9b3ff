"""The JSON layer the caller's own routes and the admin routes share (STYLE.md 14): bounded body reads,
answers, paging, times, and the checks every path and query value passes before it reaches a store.
Bodies are then decoded through their declarations (proxy/api/decode.py, proxy/api/bodies.py).

Every rejection is a `ProxyError` of the contract's table (CONTRACT.md, Errors): a body past
`MAX_BODY_BYTES` is 413 `body_too_large` before more of it is read; a bad time, cursor, limit, choice
or id is 400 `invalid_value` naming its parameter. A 5xx from client input is a bug (issue 7, item 6).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.directory.ids import is_id
from proxy.errors import ProxyError

MAX_BODY_BYTES = 64 * 1024  # these bodies are a few fields; the billed routes have their own limit
DEFAULT_LIMIT = 50
MAX_LIMIT = 500

# ASCII only: `\d` would take other scripts' digits, which int() and fromisoformat() treat unevenly
_DIGITS = re.compile(r"[0-9]{1,19}")
_NUMBER = re.compile(r"[0-9]+")
_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.(?P<frac>[0-9]{1,9}))?"
    r"(?P<offset>[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # NUL never reaches PostgreSQL: asyncpg refuses it with a 500

Cursor = Callable[[str], bool]


# ---------------------------------------------------------------------------------------------- answers


def _default(value: object) -> object:
    # amounts are integers; a Decimal from the database is whole millicredits or an exact price
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    # an answer the API composes from its declaration (proxy/api/answers.py): its fields, unset ones left
    # out, with times and Decimals left for the lines above and orjson, so both kinds render alike
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value, builtin_types=(datetime, Decimal))
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_response(data: object, status: int = 200) -> Response:
    """orjson-encoded answer of store rows and declared structs alike; datetimes as RFC 3339 in UTC
    ("...Z"), Decimals as exact numbers (whole ones as integers, others as strings)."""
    content = orjson.dumps(data, default=_default, option=orjson.OPT_UTC_Z)
    return Response(content, status_code=status, media_type="application/json")


def listing(rows: object, has_more: bool) -> Response:
    return json_response({"data": rows, "has_more": has_more})


# ---------------------------------------------------------------------------------------------- bodies


async def read_bytes(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most `limit` bytes. Past it the answer is 413 `body_too_large`: at once when
    Content-Length says so, else as soon as the streamed bytes pass it (never buffered whole first).
    What the bytes must be is their declaration's to say (proxy/api/decode.py)."""
    declared = request.headers.get("content-length", "")
    if _NUMBER.fullmatch(declared) and (len(declared) > 19 or int(declared) > limit):
        raise ProxyError.body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProxyError.body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------- path and query


def reject_control(value: str, param: str) -> str:
    """`value` unless it holds a control character (NUL included): 400 invalid_value naming `param`."""
    if _CONTROL.search(value):
        raise ProxyError.invalid_value(param[:64], f"'{param[:64]}' must not contain control characters.")
    return value


def check_params(request: Request, in_memory: Collection[str] = ()) -> None:
    """Every path parameter and query name and value is free of control characters, except the path
    parameters named in `in_memory` (matched in memory, never sent to a store). Runs after
    authentication (a stranger hears 401 whatever they send)."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and name not in in_memory:
            reject_control(value, name)
    for name, value in request.query_params.multi_items():
        reject_control(name, name)
        reject_control(value, name)


def query_choice(params: Mapping[str, str], name: str, choices: Collection[str], default: str) -> str:
    value = params.get(name, default)
    if value not in choices:
        allowed = ", ".join(f"'{c}'" for c in choices)
        raise ProxyError.invalid_value(name, f"'{name}' must be one of {allowed}.")
    return value


def query_id(params: Mapping[str, str], name: str, kind: str) -> str | None:
    """An optional id of `kind` (`usr`, `org`, ...)."""
    value = params.get(name)
    if value is not None and not is_id(value, kind):
        raise ProxyError.invalid_value(name, f"'{name}' must be an id starting with '{kind}_'.")
    return value


def id_cursor(kind: str) -> Cursor:
    """A cursor of a listing ordered by prefixed ids (orgs, users, keys): the last row's id."""
    return lambda value: is_id(value, kind)


def page(params: Mapping[str, str], cursor: Cursor) -> tuple[int, str | None]:
    """`limit` (1..500, default 50) and `after`, the last row's id of the previous page, which must be
    one this listing can have produced (`cursor`)."""
    raw = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
            raise ProxyError.invalid_value("limit", f"'limit' must be an integer from 1 to {MAX_LIMIT}.")
        limit = int(raw)
    after = params.get("after")
    if after is not None and not cursor(after):
        raise ProxyError.invalid_value("after", "'after' must be a cursor from a previous page.")
    return limit, after


# ---------------------------------------------------------------------------------------------- times


def parse_time(raw: str, name: str) -> datetime:
    """An RFC 3339 timestamp with an offset (naive times are ambiguous and refused), as an aware UTC
    datetime. Year 0, five-digit years, offsets of a day or more, and times that leave the years
    1-9999 once in UTC are 400 invalid_value, never an overflow."""
    match = _RFC3339.fullmatch(raw)
    if match is None:
        raise ProxyError.invalid_value(name, f"'{name}' must be an RFC 3339 timestamp, e.g. 2026-01-31T00:00:00Z.")
    frac = (match["frac"] or "")[:6]  # datetime holds microseconds; finer digits are dropped
    offset = "+00:00" if match["offset"] in ("Z", "z") else match["offset"]
    text = f"{match['date']}T{match['time']}{'.' + frac.ljust(6, '0') if frac else ''}{offset}"
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ProxyError.invalid_value(name, f"'{name}' is not a valid date and time.") from None


def query_time(params: Mapping[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    return None if raw is None else parse_time(raw, name)


def time_window(params: Mapping[str, str]) -> tuple[datetime | None, datetime | None]:
    """`start` and `end` of a usage query, the half-open window [start, end): an empty or reversed
    window is 400 naming `end` (the same on the caller's and the admin's usage routes)."""
    start, end = query_time(params, "start"), query_time(params, "end")
    if start is not None and end is not None and end <= start:
        raise ProxyError.invalid_value("end", "'end' must be after 'start'.")
    return start, end
