"""The wire form of an export event: Lago's shape, exact bytes, the contract's signature header (checked
against an HMAC computed here), the receiver's check, what each answer means and the backoff."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import UTC, datetime

import pytest

from proxy.config.settings import Secret
from proxy.export.events import Event, backoff, body, headers, signature, verdict, verify

EVENT = Event(org_id="org_acme", id=7, code="llm_usage", transaction_id="req-1",
              occurred_at=datetime(2026, 11, 29, 12, 0, 5, 900_000, tzinfo=UTC),
              properties={"model": "gpt-4o-mini", "charged_millicredits": 45}, attempts=1)
SECRET = Secret("whsec-test-" + "s" * 20)


def test_the_body_is_lagos_event_shape_with_unix_seconds() -> None:
    assert body(EVENT) == (b'{"event":{"transaction_id":"req-1","external_subscription_id":"org_acme",'
                           b'"code":"llm_usage","timestamp":1795953605,'
                           b'"properties":{"model":"gpt-4o-mini","charged_millicredits":45}}}')


def test_the_signature_is_hmac_sha256_of_time_dot_body() -> None:
    payload = body(EVENT)
    mac = hmac.new(SECRET.reveal().encode(), b"1796558500." + payload, hashlib.sha256).hexdigest()
    assert signature(SECRET, payload, 1796558500) == f"t=1796558500,v1={mac}"
    assert headers(EVENT, payload, SECRET, 1796558500) == {
        "content-type": "application/json", "idempotency-key": "req-1",
        "x-creditgate-signature": f"t=1796558500,v1={mac}"}
    assert headers(EVENT, payload, None, 1796558500) == {"content-type": "application/json",
                                                         "idempotency-key": "req-1"}


def test_a_receiver_verifies_time_body_and_secret() -> None:
    payload = body(EVENT)
    header = signature(SECRET, payload, 1_000_000)
    assert verify(SECRET, header, payload, now=1_000_100)
    assert not verify(SECRET, header, payload + b" ", now=1_000_100)
    assert not verify(Secret("another-secret-0000000"), header, payload, now=1_000_100)
    assert not verify(SECRET, header, payload, now=1_000_301)  # too old: a replay
    assert not verify(SECRET, header.replace("t=1000000", "t=1000001"), payload, now=1_000_100)
    assert not verify(SECRET, "v1=abc", payload, now=1_000_100)
    assert not verify(SECRET, "", payload, now=1_000_100)


@pytest.mark.parametrize(("status", "expected"), [
    (200, "delivered"), (201, "delivered"), (204, "delivered"), (299, "delivered"),
    (None, "retry"), (500, "retry"), (502, "retry"), (503, "retry"), (408, "retry"), (409, "retry"),
    (425, "retry"), (429, "retry"), (101, "retry"), (304, "dead"),
    (400, "dead"), (401, "dead"), (403, "dead"), (404, "dead"), (413, "dead"), (422, "dead"),
])
def test_what_each_answer_means(status: int | None, expected: str) -> None:
    assert verdict(status) == expected


def test_backoff_doubles_with_jitter_in_its_upper_half_and_stops_at_the_cap() -> None:
    rand = random.Random(7)
    for attempts, full in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (12, 600.0), (40, 600.0)):
        delays = [backoff(attempts, 1.0, 600.0, rand) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays), attempts
        assert max(delays) - min(delays) > full / 4  # jittered, not one fixed value
