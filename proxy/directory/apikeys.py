"""API keys: `sk-cg-` plus 43 url-safe characters (256 random bits), shown once, stored as a hash.

Only `hash_key(key)` (SHA-256 hex) and a short display prefix are ever stored; the key itself lives
in a `Secret` from generation until the creating response is written.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

from proxy.config.settings import Secret

KEY_PREFIX = "sk-cg-"
DISPLAY_CHARS = len(KEY_PREFIX) + 4  # "sk-cg-AbCd": enough to tell keys apart, useless to guess them
_SHAPE = re.compile(r"sk-cg-[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class NewApiKey:
    secret: Secret = field(repr=False)
    key_hash: str
    prefix: str


def hash_key(key: str) -> str:
    """SHA-256 hex of the key's UTF-8 bytes: how keys are stored and looked up."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> NewApiKey:
    """A new random key with its hash and display prefix."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewApiKey(Secret(key), hash_key(key), key[:DISPLAY_CHARS])


def looks_like_key(value: str) -> bool:
    """True when `value` has the shape of a creditgate key (a cheap pre-check, not authentication)."""
    return bool(_SHAPE.fullmatch(value))
