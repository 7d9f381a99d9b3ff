"""The admin routes' path ids and email addresses. Bodies are read through their declarations
(proxy/api/bodies.py, decoded by proxy/api/decode.py): 413 past 64 KiB, 400 `invalid_json`,
`missing_field` or `invalid_value` naming the field, unknown fields included.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from proxy.directory.ids import is_id
from proxy.errors import ProxyError

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def path_id(request: Request, name: str, kind: str) -> str:
    """The path parameter `name`, which must be an id of `kind` (400 invalid_value otherwise)."""
    value = request.path_params[name]
    if not is_id(value, kind):
        raise ProxyError.invalid_value(name, f"'{name}' must be an id starting with '{kind}_'.")
    return str(value)


def email(raw: str, name: str = "email") -> str:
    """An email address as stored: trimmed, lower-case (at most 254 characters once lowered)."""
    value = raw.strip().lower()
    if len(value) > 254 or not _EMAIL.fullmatch(value) or "\x00" in value:
        raise ProxyError.invalid_value(name, f"'{name}' must be an email address.")
    return value


def email_or_none(raw: str | None, name: str = "email") -> str | None:
    return None if raw is None else email(raw, name)
