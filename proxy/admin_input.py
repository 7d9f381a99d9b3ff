"""Reading and validating admin requests, and writing their JSON answers.

Every rejection is a `ProxyError`: unparsable or non-object bodies are 400 `invalid_json`, a missing
required field 400 `missing_field`, anything of the wrong type, sign, size or vocabulary 400
`invalid_value` naming the field in `param`. Unknown fields are rejected too, so a typo never
silently leaves a value unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import ProxyError
from proxy.ids import is_id

MAX_AMOUNT = 10**15  # millicredits ($1bn): far beyond any real grant, far below bigint overflow in sums
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_CURSOR = re.compile(r"[A-Za-z0-9_:.+-]{1,200}")


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def json_response(data: object, status: int = 200) -> Response:
    """orjson-encoded answer; datetimes as RFC 3339, Decimals as exact strings."""
    content = orjson.dumps(data, default=_default, option=orjson.OPT_UTC_Z)
    return Response(content, status_code=status, media_type="application/json")


def listing(rows: object, has_more: bool) -> Response:
    return json_response({"data": rows, "has_more": has_more})


def path_id(request: Request, name: str, kind: str) -> str:
    """The path parameter `name`, which must be an id of `kind` (400 invalid_value otherwise)."""
    value = request.path_params[name]
    if not is_id(value, kind):
        raise ProxyError.invalid_value(name, f"'{name}' must be an id starting with '{kind}_'.")
    return str(value)


def query_id(request: Request, name: str, kind: str) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not is_id(value, kind):
        raise ProxyError.invalid_value(name, f"'{name}' must be an id starting with '{kind}_'.")
    return value


def page(request: Request) -> tuple[int, str | None]:
    """`limit` (1..500, default 50) and `after` (the cursor: the last row's id of the previous page)."""
    raw = request.query_params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise ProxyError.invalid_value("limit", f"'limit' must be an integer from 1 to {MAX_LIMIT}.")
        limit = int(raw)
    after = request.query_params.get("after")
    if after is not None and not _CURSOR.fullmatch(after):
        raise ProxyError.invalid_value("after", "'after' must be a cursor from a previous page.")
    return limit, after


def parse_time(raw: str, name: str) -> datetime:
    """An RFC 3339 timestamp with an offset (naive times are ambiguous and refused)."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ProxyError.invalid_value(name, f"'{name}' must be an RFC 3339 timestamp.") from None
    if value.tzinfo is None:
        raise ProxyError.invalid_value(name, f"'{name}' must include a UTC offset, e.g. 'Z'.")
    return value


def query_time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    return None if raw is None else parse_time(raw, name)


def query_choice(request: Request, name: str, options: Collection[str], default: str) -> str:
    value = request.query_params.get(name, default)
    if value not in options:
        raise ProxyError.invalid_value(name, f"'{name}' must be one of: {', '.join(sorted(options))}.")
    return value


class Body:
    """A JSON object body with typed getters; `allowed` lists the fields the route accepts."""

    def __init__(self, data: dict[str, Any], allowed: Collection[str]) -> None:
        for name in data:
            if name not in allowed:
                raise ProxyError.invalid_value(name, f"Unknown field '{name}'.")
        self._data = data

    @classmethod
    async def read(cls, request: Request, allowed: Collection[str]) -> Body:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise ProxyError.invalid_json() from None
        if not isinstance(data, dict):
            raise ProxyError.invalid_json("The request body must be a JSON object.")
        return cls(data, allowed)

    def has(self, name: str) -> bool:
        return name in self._data

    def _get(self, name: str, required: bool) -> Any:
        if name not in self._data and required:
            raise ProxyError.missing_field(name)
        return self._data.get(name)

    def text(self, name: str, *, required: bool = True, max_len: int = 200, default: str = "") -> str:
        value = self._get(name, required)
        if value is None and not required:
            return default
        # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database
        if not isinstance(value, str) or not value.strip() or len(value) > max_len or "\x00" in value:
            message = f"'{name}' must be a non-empty string of at most {max_len} characters."
            raise ProxyError.invalid_value(name, message)
        return value.strip()

    def amount(self, name: str, *, signed: bool = False) -> int:
        """A required integer amount of millicredits: positive, or non-zero when `signed`."""
        value = self._get(name, True)
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_AMOUNT
        if not ok or value == 0 or (value < 0 and not signed):
            kind = "a non-zero" if signed else "a positive"
            raise ProxyError.invalid_value(name, f"'{name}' must be {kind} integer of at most {MAX_AMOUNT}.")
        return int(value)

    def limit_or_null(self, name: str) -> int | None:
        """An optional non-negative integer, where null means unlimited."""
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_AMOUNT:
            raise ProxyError.invalid_value(name, f"'{name}' must be null or an integer from 0 to {MAX_AMOUNT}.")
        return int(value)

    def boolean(self, name: str) -> bool | None:
        value = self._data.get(name)
        if value is not None and not isinstance(value, bool):
            raise ProxyError.invalid_value(name, f"'{name}' must be true or false.")
        return value

    def choice(self, name: str, options: Collection[str], *, nullable: bool = False) -> str | None:
        value = self._data.get(name)
        if value is None and (nullable or name not in self._data):
            return None
        if value not in options:
            allowed = ", ".join(sorted(options)) + (", or null" if nullable else "")
            raise ProxyError.invalid_value(name, f"'{name}' must be one of: {allowed}.")
        return str(value)

    def ident(self, name: str, kind: str) -> str:
        """A required id of `kind`."""
        value = self._get(name, True)
        if not is_id(value, kind):
            raise ProxyError.invalid_value(name, f"'{name}' must be an id starting with '{kind}_'.")
        return str(value)

    def ident_or_none(self, name: str, kind: str) -> str | None:
        return None if self._data.get(name) is None else self.ident(name, kind)

    def email(self, name: str) -> str:
        value = self.text(name, max_len=254).lower()
        if not _EMAIL.fullmatch(value):
            raise ProxyError.invalid_value(name, f"'{name}' must be an email address.")
        return value

    def timestamp(self, name: str) -> datetime | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ProxyError.invalid_value(name, f"'{name}' must be an RFC 3339 timestamp string.")
        return parse_time(value, name)
