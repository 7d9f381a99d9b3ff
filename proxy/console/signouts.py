"""Signed-out console sessions: the server side of "Sign out".

A session cookie is stateless (proxy/console/session.py): without this, a copy taken before its user signed
out would stay valid until it expired. Signing out records the session's nonce until that expiry, in
PostgreSQL so that every replica refuses the copy at once, and the guard checks it on every console request
(one primary-key probe). Rows past their session's expiry can never match a valid cookie: each sign-out
removes a bounded number of them. PostgreSQL unreachable is 503 `ledger_unavailable` (fail closed: a session
that may have been signed out is never let in).
"""

from __future__ import annotations

from proxy.db.pool import Pool, fetch

TIMEOUT = 3.0
PURGE = 100  # expired rows removed per sign-out: the table never holds more than the sessions of SESSION_SECONDS
_SIGN_OUT_SQL = """
WITH gone AS (
  DELETE FROM creditgate.console_signouts
   WHERE nonce IN (SELECT nonce FROM creditgate.console_signouts WHERE expires_at < now() LIMIT $3)
)
INSERT INTO creditgate.console_signouts (nonce, expires_at) VALUES ($1, to_timestamp($2))
ON CONFLICT (nonce) DO NOTHING"""
_SIGNED_OUT_SQL = "SELECT 1 FROM creditgate.console_signouts WHERE nonce = $1"


class PgSignOuts:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def sign_out(self, nonce: str, expires: int) -> None:
        """Refuse the session with `nonce` from now until `expires` (Unix seconds)."""
        await fetch(self._pool, _SIGN_OUT_SQL, nonce, expires, PURGE, timeout=TIMEOUT)

    async def signed_out(self, nonce: str) -> bool:
        return bool(await fetch(self._pool, _SIGNED_OUT_SQL, nonce, timeout=TIMEOUT))
