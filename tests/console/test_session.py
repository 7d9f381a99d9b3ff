"""The session cookie: signed, expiring, never the secret; a CSRF token only the key can make."""

from __future__ import annotations

import base64
import json

from proxy.config.settings import Secret
from proxy.console.session import COOKIE, Session, Sessions, clear_cookie_header, cookie_header

TOKEN = Secret("operator-token-" + "s" * 24)
KEY_HASH = "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_round_trips_and_names_only_the_subject() -> None:
    clock = Clock()
    sessions = Sessions(TOKEN, clock=clock, lifetime=60)
    session, value = sessions.issue(f"key:{KEY_HASH}")
    assert sessions.read(value) == session
    assert session.expires == 1_000_060 and session.key_hash == KEY_HASH
    payload = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    assert set(payload) == {"s", "e", "n"} and payload["s"] == f"key:{KEY_HASH}"
    assert TOKEN.reveal() not in value
    operator, value = sessions.issue("operator")
    assert sessions.read(value) == operator and operator.key_hash is None


def test_expired_forged_or_malformed_cookies_are_no_session() -> None:
    clock = Clock()
    sessions = Sessions(TOKEN, clock=clock, lifetime=60)
    _, value = sessions.issue("operator")
    body, tag = value.split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps({"s": "operator", "e": 9_999_999_999, "n": "x"}).encode())
    for bad in (None, "", "x", "a.b.c", f"{body}.{tag[:-2]}AA", f"{forged_body.decode().rstrip('=')}.{tag}",
                f"{body}!.{tag}", "." * 600, f"{body}.", f".{tag}"):
        assert sessions.read(bad) is None, bad
    assert Sessions(Secret("another-token-" + "t" * 24), clock=clock).read(value) is None  # a rotated token
    clock.now += 59
    assert sessions.read(value) is not None
    clock.now += 1
    assert sessions.read(value) is None


def test_the_csrf_token_belongs_to_one_session_and_one_key() -> None:
    sessions = Sessions(TOKEN)
    first, _ = sessions.issue("operator")
    second, _ = sessions.issue("operator")
    token = sessions.csrf(first)
    assert sessions.csrf_ok(first, token) and not sessions.csrf_ok(second, token)
    assert not sessions.csrf_ok(first, "") and not sessions.csrf_ok(first, token[:-1])
    assert not Sessions(Secret("another-token-" + "t" * 24)).csrf_ok(first, token)
    assert sessions.csrf(Session("operator", 1, first.nonce)) == token  # the nonce alone decides


def test_cookie_headers() -> None:
    assert cookie_header("v", secure=False) == f"{COOKIE}=v; Path=/console; Max-Age=28800; HttpOnly; SameSite=Strict"
    assert cookie_header("v", secure=True).endswith("; HttpOnly; SameSite=Strict; Secure")
    assert clear_cookie_header(secure=False) == f"{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict"
