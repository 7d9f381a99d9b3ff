"""Opaque prefixed identifiers: `org_…`, `usr_…`, `key_…`, `req_…` (CONTRACT.md, Identifiers).

A generated id is the prefix and 26 lower-case Crockford base32 characters: 48 bits of milliseconds
then 80 random bits, so ids sort roughly by creation time and listings can page by id. Clients must
treat ids as opaque; `is_id` accepts any prefix-plus-token id (seeded ids such as `org_demo` too).
"""

from __future__ import annotations

import re
import secrets
import time

KINDS = ("org", "usr", "key", "req")
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_id(kind: str) -> str:
    """A fresh id of `kind` ("org", "usr", "key" or "req")."""
    if kind not in KINDS:
        raise ValueError(f"unknown id kind {kind!r}")
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{kind}_{''.join(reversed(chars))}"


def is_id(value: object, kind: str) -> bool:
    """True when `value` is a well-formed id of `kind`: the prefix, then 1-64 of [A-Za-z0-9_-]."""
    prefix = f"{kind}_"
    return isinstance(value, str) and value.startswith(prefix) and bool(_TOKEN.fullmatch(value[len(prefix) :]))
