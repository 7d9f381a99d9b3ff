"""The policy chain, in order, as one literal (the passthrough runs `await policy(ctx)` for each).

PinConfig -> Authenticate -> ResolveOrg -> RateLimit -> RewriteModel -> InjectProviderKey -> ReserveCredits:
the request first takes the configuration current at its start (a reload never changes it mid-request);
the rate limit needs the member and tier (ResolveOrg) and runs before any money moves, so a refused request
holds nothing; the money is reserved last, once the org, the model, its multiplier and who pays the
provider are all known.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from policies.auth import Authenticate, KeyLookup
from policies.byok import InjectProviderKey
from policies.config import PinConfig
from policies.credits import Balances, ReserveCredits
from policies.model import RewriteModel
from policies.org import ResolveOrg
from policies.ratelimit import RateLimit
from policies.responses import OwnResponses
from policies.settlement import Record
from proxy.config.catalogue import Catalogue
from proxy.config.live import LiveConfig
from proxy.config.policy import PolicyConfig
from proxy.directory.crypto import KeyBox
from proxy.directory.responses import ResponseOwners
from proxy.directory.types import Directory
from proxy.gateway.context import Policy
from proxy.gateway.tokens import TokenCounter
from proxy.ledger.spool import Spool
from proxy.ledger.types import Ledger

__all__ = [
    "Authenticate",
    "InjectProviderKey",
    "OwnResponses",
    "PinConfig",
    "RateLimit",
    "ReserveCredits",
    "ResolveOrg",
    "RewriteModel",
    "default_policies",
]


def default_policies(
    *,
    keys: KeyLookup,
    directory: Directory,
    ledger: Ledger,
    policy: PolicyConfig,
    catalogue: Catalogue,
    keybox: KeyBox,
    counter: TokenCounter,
    record: Record | None = None,
    on_overage: Callable[[str, int], None] | None = None,
    balances: Balances | None = None,
    redis: Redis | None = None,
    unenforced: Callable[[str], None] | None = None,
    spool: Spool | None = None,
    live: LiveConfig | None = None,
    responses: ResponseOwners | None = None,
) -> tuple[Policy, ...]:
    """The chain. `keys` is a `proxy.keycache.KeyCache`; `record(outcome, settlement)` counts
    settlements for the metrics (see policies.settlement.Record); `on_overage(model, millicredits)` counts
    a charge above its hold (a defect). `balances` (PgLedger.credits) lets a large prompt be refused
    before it is tokenized when the org or the member cannot pay even its output. `redis` (short socket timeouts, no
    retries) keeps the tiers' rate limits; without it there is no RateLimit in the chain.
    `unenforced(reason)` counts requests let through because Redis did not answer. The rate limit is one
    object in two places: its rpm runs before the body, its tpm inside ReserveCredits once the request's
    token bound is known (`limit_tokens`), before the money is held. `spool` keeps the settlements an
    unreachable ledger could not take (proxy/ledger/spool.py). With `live` every request is pinned to its
    current snapshot first (PinConfig); without it, to `policy` and `catalogue`. With `responses` a
/v1/responses caller reaches only their own stored responses (OwnResponses: `previous_response_id`)."""
    limit = RateLimit(policy, redis, unenforced=unenforced) if redis is not None else None
    return (
        *((PinConfig(live),) if live is not None else ()),
        Authenticate(keys),
        ResolveOrg(directory),
        *((limit,) if limit is not None else ()),
        RewriteModel(policy, catalogue),
        InjectProviderKey(directory, catalogue, keybox),
        *((OwnResponses(responses),) if responses is not None else ()),
        ReserveCredits(ledger, policy, catalogue, counter, record=record, on_overage=on_overage,
                       balances=balances, limit_tokens=limit.reserve_tokens if limit is not None else None,
                       spool=spool),
    )
