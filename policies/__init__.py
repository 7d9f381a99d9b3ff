"""The policy chain, in order, as one literal (the passthrough runs `await policy(ctx)` for each).

Authenticate -> ResolveOrg -> RewriteModel -> InjectProviderKey -> ReserveCredits: the money is
reserved last, once the org, the model, its multiplier and who pays the provider are all known.
"""

from __future__ import annotations

from policies.auth import Authenticate, KeyLookup
from policies.byok import InjectProviderKey
from policies.credits import Record, ReserveCredits
from policies.model import RewriteModel
from policies.org import ResolveOrg
from proxy.context import Directory, Ledger, Policy
from proxy.crypto import KeyBox
from proxy.policy_config import PolicyConfig
from proxy.pricing import Catalogue
from proxy.tokens import TokenCounter

__all__ = [
    "Authenticate",
    "InjectProviderKey",
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
) -> tuple[Policy, ...]:
    """The chain. `keys` is a `proxy.keycache.KeyCache`; `record(outcome, settlement)` counts
    settlements for the metrics (see policies.credits.Record)."""
    return (
        Authenticate(keys),
        ResolveOrg(directory),
        RewriteModel(policy, catalogue),
        InjectProviderKey(directory, catalogue, keybox),
        ReserveCredits(ledger, policy, catalogue, counter, record=record),
    )
