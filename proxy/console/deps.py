"""What the console's pages share: the admin API's stores and body reader, the console's own reads, the
guard, the budget alerts' store, the key broadcast, and the clock (burn rate and windows are computed from
it; tests pin it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from proxy.admin.deps import AdminDirectory
from proxy.admin.exports import Alerts
from proxy.api.decode import BodyReader
from proxy.api.stores import LedgerAdmin
from proxy.console.guard import Guard
from proxy.console.reads import ConsoleReads


@dataclass(frozen=True, slots=True)
class ConsoleDeps:
    directory: AdminDirectory
    ledger: LedgerAdmin
    reads: ConsoleReads
    guard: Guard
    bodies: BodyReader
    tiers: tuple[str, ...]
    now: Callable[[], datetime]
    alerts: Alerts  # the admin API's budget alerts store (proxy/export/alerts.py)
    on_revoke: Callable[[str], Awaitable[None]]  # the admin API's key broadcast: every replica drops the key
