"""What one exported event looks like on the wire, and what its delivery's answer means.

The body follows Lago's event shape (`{"event": {"transaction_id", "external_subscription_id", "code",
"timestamp", "properties"}}`), amounts in integer millicredits. The same outbox row always gives the same
bytes, so a receiver sees an identical body on every attempt. Headers (CONTRACT.md, Usage export):
`Idempotency-Key: <transaction_id>` and, with a secret, `X-Creditgate-Signature: t=<unix seconds>,v1=<hex
HMAC-SHA256 of "<t>.<body>">`. `verify` is the receiver's side, kept here as the reference.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from proxy.config.settings import Secret

SIGNATURE_HEADER = "X-Creditgate-Signature"
Verdict = Literal["delivered", "retry", "dead"]
# a 4xx that may pass on a later attempt: timeout, conflict, too early, too many requests
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox row (proxy/export/outbox.py) as the deliverer needs it."""

    org_id: str
    id: int
    code: str
    transaction_id: str
    occurred_at: datetime
    properties: dict[str, Any]
    attempts: int  # including the attempt about to be made


def body(event: Event) -> bytes:
    return orjson.dumps({"event": {
        "transaction_id": event.transaction_id,
        "external_subscription_id": event.org_id,
        "code": event.code,
        "timestamp": int(event.occurred_at.timestamp()),
        "properties": event.properties,
    }})


def signature(secret: Secret, payload: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.reveal().encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def headers(event: Event, payload: bytes, secret: Secret | None, timestamp: int) -> dict[str, str]:
    out = {"content-type": "application/json", "idempotency-key": event.transaction_id}
    if secret is not None:
        out[SIGNATURE_HEADER.lower()] = signature(secret, payload, timestamp)
    return out


def verify(secret: Secret, header: str, payload: bytes, now: int, tolerance: int = 300) -> bool:
    """A receiver's check: the header's MAC matches and its time is within `tolerance` seconds of `now`
    (a replayed old delivery is refused). Constant-time comparison."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp, mac = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, payload, int(stamp)), f"t={stamp},v1={mac}")


def verdict(status: int | None) -> Verdict:
    """2xx is delivered. A transport failure or timeout (None), a 5xx, 408, 409, 425 or 429 is retried.
    Any other 4xx is dead-lettered at once: the receiver refused these bytes (a bad body, auth or URL) and
    sending them again cannot help; an operator retries once the receiver is fixed."""
    if status is not None and 200 <= status < 300:
        return "delivered"
    if status is None or status >= 500 or status in _RETRYABLE_4XX or status < 200:
        return "retry"
    return "dead"


def backoff(attempts: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base * 2^(attempts-1), at most `cap`,
    with full jitter over its upper half (replicas retrying one receiver spread out)."""
    delay = min(cap, base * 2.0 ** max(attempts - 1, 0))
    return delay * (0.5 + 0.5 * (rand or random).random())
