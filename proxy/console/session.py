"""The console's session: a signed, expiring cookie that names who signed in, never their secret.

The cookie value is `<payload>.<tag>`, both base64url: the payload is JSON `{"s": subject, "e": expiry, "n":
nonce}` and the tag HMAC-SHA256 over it. The subject is "operator" or "key:" and the SHA-256 of the API key
(the handle the database stores, from which the key cannot be recovered). The signing key is derived from
the admin token (HMAC of a fixed label), so every replica and worker accepts every other's cookies without
shared state, and rotating the admin token signs everyone out. The key behind a session is looked up again
on every request (proxy/console/guard.py), so a revoked key's session ends with the revocation; signing out
records the session's nonce until its expiry (proxy/console/signouts.py), so a copy of the cookie taken
before is refused too.

CSRF: every form carries `csrf`, an HMAC of the session's nonce under the same key (proxy/console/forms.py
checks it with the Origin or Referer).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.config.settings import Secret

COOKIE = "cg_console"
PATH = "/console"
SESSION_SECONDS = 8 * 3600
OPERATOR = "operator"
_LABEL = b"creditgate console session v1"
_MAX_COOKIE = 512  # a real one is about 200 characters
_B64 = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Session:
    subject: str  # "operator" or "key:<sha256 hex of the API key>"
    expires: int  # Unix seconds
    nonce: str

    @property
    def key_hash(self) -> str | None:
        return self.subject.removeprefix("key:") if self.subject.startswith("key:") else None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: base64's decoder skips characters outside its alphabet, which would make many values one."""
    if not _B64.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks session cookies and their CSRF tokens."""

    def __init__(self, admin_token: Secret, *, clock: Callable[[], float] = time.time,
                 lifetime: int = SESSION_SECONDS) -> None:
        self._key = hmac.new(admin_token.reveal().encode(), _LABEL, hashlib.sha256).digest()
        self._clock = clock
        self._lifetime = lifetime

    def _tag(self, purpose: bytes, payload: bytes) -> bytes:
        return hmac.new(self._key, purpose + b"\x00" + payload, hashlib.sha256).digest()

    def issue(self, subject: str) -> tuple[Session, str]:
        """A new session for `subject` and its cookie value."""
        session = Session(subject, int(self._clock()) + self._lifetime, secrets.token_urlsafe(16))
        payload = json.dumps({"s": session.subject, "e": session.expires, "n": session.nonce},
                             separators=(",", ":")).encode()
        return session, f"{_b64(payload)}.{_b64(self._tag(b'session', payload))}"

    def read(self, value: str | None) -> Session | None:
        """The session a cookie value carries, or None when it is absent, malformed, forged or expired."""
        if not value or len(value) > _MAX_COOKIE or value.count(".") != 1:
            return None
        body, tag = value.split(".")
        try:
            payload, given = _unb64(body), _unb64(tag)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._tag(b"session", payload)):
            return None
        try:
            fields = json.loads(payload)
        except ValueError:  # pragma: no cover - we signed it, so we wrote it
            return None
        session = Session(str(fields["s"]), int(fields["e"]), str(fields["n"]))
        return session if session.expires > self._clock() else None

    def csrf(self, session: Session) -> str:
        """The session's CSRF token: forms carry it, and only this key can make it."""
        return _b64(self._tag(b"csrf", session.nonce.encode()))

    def csrf_ok(self, session: Session, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf(session).encode())


def cookie_header(value: str, *, secure: bool, max_age: int = SESSION_SECONDS) -> str:
    """Set-Cookie for the session: HttpOnly, SameSite=Strict, Path=/console, Secure over https."""
    parts = [f"{COOKIE}={value}", f"Path={PATH}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def clear_cookie_header(*, secure: bool) -> str:
    return cookie_header("", secure=secure, max_age=0)
