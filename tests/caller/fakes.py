"""Stand-ins for what other parts supply: `identify` (the app runs Authenticate + ResolveOrg) and the
LiteLLM probe. The ledger is tests/fakes.py's `FakeLedger`, whose canned rows the routes pass through."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from proxy.config.settings import Secret
from proxy.directory.types import Membership
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext


def member(org: str, user: str, role: str = "member", tier: str = "starter") -> Membership:
    return Membership(org_id=org, user_id=user, role=role, is_default=True, power_level=None,
                      member_suspended=False, org_tier=tier, org_suspended=False)


@dataclass
class FakeIdentify:
    """Bearer token -> membership; anything else is the contract's 401."""

    tokens: dict[str, Membership]
    calls: int = 0

    async def __call__(self, request: Request) -> RequestContext:
        self.calls += 1
        auth = request.headers.get("authorization", "")
        found = self.tokens.get(auth.removeprefix("Bearer "))
        if found is None:
            raise ProxyError.invalid_api_key()
        return RequestContext(request_id="req_test", route="caller", headers={}, body={}, membership=found)


@dataclass
class FakeProbe:
    answer: tuple[int, str] = (200, "The provider accepted the key.")
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, model: str, key: Secret) -> tuple[int, str]:
        self.calls.append((model, key.reveal()))
        return self.answer
