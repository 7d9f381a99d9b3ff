"""Reading and validating admin request bodies and path ids (the shared JSON layer is proxy/api/jsonapi.py).

Every rejection is a `ProxyError`: a body past 64 KiB is 413 `body_too_large` (read no further),
unparsable or non-object bodies are 400 `invalid_json`, a missing required field 400 `missing_field`,
anything of the wrong type, sign, size or vocabulary 400 `invalid_value` naming the field in `param`.
Unknown fields are rejected too, so a typo never silently leaves a value unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime
from typing import Any

from starlette.requests import Request

from proxy.api.jsonapi import parse_time, read_object
from proxy.directory.ids import is_id
from proxy.errors import ProxyError

MAX_AMOUNT = 10**15  # millicredits ($1bn): far beyond any real grant, far below bigint overflow in sums
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def path_id(request: Request, name: str, kind: str) -> str:
    """The path parameter `name`, which must be an id of `kind` (400 invalid_value otherwise)."""
    value = request.path_params[name]
    if not is_id(value, kind):
        raise ProxyError.invalid_value(name, f"'{name}' must be an id starting with '{kind}_'.")
    return str(value)


def email_or_none(raw: str | None, name: str = "email") -> str | None:
    """An email address as stored (trimmed, lower-case), or None."""
    if raw is None:
        return None
    value = raw.strip().lower()
    if len(value) > 254 or not _EMAIL.fullmatch(value) or "\x00" in value:
        raise ProxyError.invalid_value(name, f"'{name}' must be an email address.")
    return value


class Body:
    """A JSON object body with typed getters; `allowed` lists the fields the route accepts."""

    def __init__(self, data: dict[str, Any], allowed: Collection[str]) -> None:
        for name in data:
            if name not in allowed:
                raise ProxyError.invalid_value(name[:64], f"Unknown field '{name[:64]}'.")
        self._data = data

    @classmethod
    async def read(cls, request: Request, allowed: Collection[str]) -> Body:
        """The bounded body (proxy/api/jsonapi.py); call it only once the caller is authenticated."""
        return cls(await read_object(request), allowed)

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
        if not isinstance(value, str) or value not in options:  # a list or object is not hashable: test first
            allowed = ", ".join(sorted(options)) + (", or null" if nullable else "")
            raise ProxyError.invalid_value(name, f"'{name}' must be one of: {allowed}.")
        return value

    def ident(self, name: str, kind: str) -> str:
        """A required id of `kind`."""
        value = self._get(name, True)
        if not is_id(value, kind):
            raise ProxyError.invalid_value(name, f"'{name}' must be an id starting with '{kind}_'.")
        return str(value)

    def ident_or_none(self, name: str, kind: str) -> str | None:
        return None if self._data.get(name) is None else self.ident(name, kind)

    def email(self, name: str) -> str:
        value = email_or_none(self.text(name, max_len=254), name)
        assert value is not None
        return value

    def timestamp(self, name: str) -> datetime | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ProxyError.invalid_value(name, f"'{name}' must be an RFC 3339 timestamp string.")
        return parse_time(value, name)
