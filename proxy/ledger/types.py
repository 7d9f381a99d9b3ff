"""What the hot path and the ledger exchange: a hold's request and answer, a settlement and its
result, the usage sources, and the `Ledger` protocol PgLedger implements (proxy/ledger/pg.py)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

# Usage sources, as recorded on a settlement (CONTRACT.md, Money).
PROVIDER = "provider"
ESTIMATE = "estimate"
CHECKPOINT = "checkpoint"
PROMPT_ONLY = "prompt_only"


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """What `Ledger.reserve` needs. Rates are millicredits per token (exact decimals), used to settle
    a hold whose replica died (checkpoint / prompt_only) from the database alone."""

    org_id: str
    user_id: str
    key_id: str
    request_id: str
    amount: int
    model: str
    byok: bool
    prompt_tokens: int
    input_rate: Decimal
    output_rate: Decimal
    list_input_rate: Decimal
    list_output_rate: Decimal
    price_version: str | None = None  # the prices it is held and settled at (proxy/config/live.py)
    end_user: str | None = None  # the OpenAI `user` field: the platform's own customer (attribution)
    tags: tuple[str, ...] = ()  # `X-Tags`, already validated: at most 8 safe tokens of at most 64 characters
    power_level: str | None = None  # the level that serves it (after a downgrade, the lower one)


@dataclass(frozen=True, slots=True)
class Hold:
    org_id: str
    request_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Settlement:
    prompt_tokens: int
    completion_tokens: int
    charge: int  # millicredits, already rounded up
    list_price: int  # millicredits at list price (what BYOK would have cost)
    usage_source: str
    model: str
    provider: str | None
    deployment: str | None


@dataclass(frozen=True, slots=True)
class SettleResult:
    status: str  # "posted" | "late_posted" | "already_settled"
    charged: int
    remaining: int | None  # min(pool available, allocation available); None if unknown


class Ledger(Protocol):
    """The money side. Raises `ProxyError` (402 codes, 409 request_id_in_use, 503 ledger_unavailable)."""

    async def reserve(self, request: HoldRequest) -> Hold:
        """Hold `request.amount` on the pool and the allocation at once. A caller cancelled while the
        reserve is in flight leaves no hold: one committed anyway is voided by the ledger itself (only
        that hold, never another request's), so the sweeper never charges a request that was not sent."""
        ...

    async def settle(self, org_id: str, request_id: str, settlement: Settlement) -> SettleResult: ...

    async def void(self, org_id: str, request_id: str) -> str:
        """Release a pending hold whole. The hold's outcome: `voided`, or `already_posted`, `already_expired`
        (the sweeper settled it first), `already_voided`, `not_found`."""
        ...

    async def checkpoint(self, org_id: str, request_id: str, completion_tokens: int) -> None: ...
