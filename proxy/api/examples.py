"""One example of each request and answer body, as /openapi.json shows them next to their schemas.

tests/api/test_examples.py decodes every example through its own declaration (constraints and Rules
included, with the test suite's policy file vocabularies) and validates it against the generated schema,
so an example can never show what the API would refuse or never send.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any

import msgspec

from proxy.api import answers as a
from proxy.api import bodies as b

AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ORG, USER, KEY = "org_01jcz8d9p3n6r8t1v4w7y0a2c5", "usr_01jcz8e0k0m4s7q9w2x5y8b3d6", "key_01jcz8f4h6j8k0m2n4p6q8r0s2"
POOL = a.Pool(balance=997_500, held=2_500, available=995_000, overage=0, granted=1_000_000, posted=2_500, version=3)
MEMBER: dict[str, Any] = dict(role="member", allocation_millicredits=50_000, allocation_period="month", default=False,
                              power_level="balanced", suspended=False, suspended_by=None, created_at=AT, updated_at=AT)
ORG_ROW = a.Org(id=ORG, name="Acme", tier="starter", suspended=False, created_at=AT)
KEY_ROW = a.ApiKey(id=KEY, user_id=USER, org_id=ORG, name="laptop", prefix="sk-cg-4f2a", created_at=AT,
                   revoked_at=None, revoked=False, models=["gpt-4o-mini"], routes=["/v1/chat/completions"],
                   read_only=False, limit_millicredits=20_000, limit_period="month",
                   usage=a.KeyUsage(limit=20_000, used=1_200, held=300, available=18_500, period="month",
                                    resets_at=datetime(2026, 12, 1, tzinfo=UTC)))
PROVIDER_KEY = a.ProviderKey(provider="openai", scope="user", masked_key="****0001", enabled=True, created_at=AT,
                             updated_at=AT)
MODEL = a.Model(id="gpt-4o-mini", created=1767225600, owned_by="openai")
PRICE_VERSION = "pv_3f9a0c1e5b7d2468"
ALLOCATION = a.Allocation(limit=50_000, used=2_500, held=0, available=47_500, period="month",
                          resets_at=datetime(2026, 12, 1, tzinfo=UTC))

EXAMPLES: dict[type[msgspec.Struct], msgspec.Struct] = {
    # requests
    b.CreateOrg: b.CreateOrg(name="Acme", tier="starter"),
    b.PatchOrg: b.PatchOrg(tier="professional", suspended=False),
    b.Grant: b.Grant(amount_millicredits=1_000_000, reason="Welcome credit", idempotency_key="welcome-acme",
                     expires_at="2027-01-01T00:00:00Z"),
    b.Adjustment: b.Adjustment(amount_millicredits=2_500, reason="Refund of a failed request",
                               idempotency_key="refund-7"),
    b.CreateUser: b.CreateUser(email="ann@acme.test", name="Ann"),
    b.PutMember: b.PutMember(role="member", allocation_millicredits=50_000, allocation_period="month",
                             power_level="balanced"),
    b.CreateKey: b.CreateKey(user_id=USER, org_id=ORG, name="laptop", models=["gpt-4o-mini"],
                             routes=["/v1/chat/completions"], limit_millicredits=20_000, limit_period="month"),
    b.PatchKey: b.PatchKey(limit_millicredits=50_000, read_only=True),
    b.PutProviderKey: b.PutProviderKey(provider="openai", api_key="sk-proj-your-own-key-0001", scope="user"),
    b.ToggleProviderKey: b.ToggleProviderKey(enabled=False),
    b.PutAlertThresholds: b.PutAlertThresholds(pool=[50, 80, 100], allocation=[80, 100]),
    # answers
    a.Error: a.Error(error=a.ErrorDetail(message="Missing required field: 'tier'.", type="invalid_request_error",
                                         param="tier", code="missing_field")),
    a.Org: ORG_ROW,
    a.OrgDetail: a.OrgDetail(**msgspec.structs.asdict(ORG_ROW), pool=POOL, members=[
        a.OrgMember(user_id=USER, email="ann@acme.test", name="Ann", allocation=ALLOCATION, **MEMBER)]),
    a.MemberDetail: a.MemberDetail(org_id=ORG, user_id=USER, email="ann@acme.test", name="Ann", allocation=ALLOCATION,
                                   **MEMBER),
    a.Member: a.Member(org_id=ORG, user_id=USER, **MEMBER),
    a.MemberRemoved: a.MemberRemoved(org_id=ORG, user_id=USER, deleted=True),
    a.Credit: a.Credit(id="grant_12", org_id=ORG, kind="grant", amount_millicredits=1_000_000,
                       reason="Welcome credit", idempotency_key="welcome-acme", expires_at=None, expired_at=None,
                       forfeited_millicredits=None, actor="operator", created_at=AT, replayed=False, pool=POOL),
    a.JournalEntry: a.JournalEntry(id="42", kind="post", amount_millicredits=-2_500, balance_delta=-2_500,
                                   held_delta=-3_000, granted_delta=0, posted_delta=2_500, overage_delta=0, version=3,
                                   request_id="req_01jcz8g2k4m6p8r0t2v4x6z8b0", user_id=USER, actor=None,
                                   reason=None, created_at=AT, price_version=PRICE_VERSION),
    a.Usage: a.Usage(model="gpt-4o-mini", requests=12, prompt_tokens=3_400, completion_tokens=900,
                     charged_millicredits=2_500, list_price_millicredits=2_000),
    a.AuditEntry: a.AuditEntry(id="7", actor="operator", action="member.put", org_id=ORG, target=USER,
                               detail={"role": "member"}, created_at=AT),
    a.User: a.User(id=USER, email="ann@acme.test", name="Ann", created_at=AT),
    a.ApiKey: KEY_ROW,
    a.CreatedApiKey: a.CreatedApiKey(**msgspec.structs.asdict(KEY_ROW), key="sk-cg-4f2a" + "x" * 39),
    a.Credits: a.Credits(org_id=ORG, pool=a.PoolCredit(balance=997_500, held=2_500, available=995_000),
                         allocation=ALLOCATION,
                         key=a.KeyCredit(id=KEY, limit=20_000, used=1_200, held=300, available=18_500, period="month",
                                         resets_at=datetime(2026, 12, 1, tzinfo=UTC))),
    a.RequestRecord: a.RequestRecord(request_id="req_01jcz8g2k4m6p8r0t2v4x6z8b0", status="settled",
                                     model="gpt-4o-mini", prompt_tokens=310, completion_tokens=42,
                                     held_millicredits=3_000, charged_millicredits=2_500,
                                     list_price_millicredits=2_000, usage_source="provider", byok=False,
                                     price_version=PRICE_VERSION),
    a.PriceVersionSummary: a.PriceVersionSummary(id="3", version=PRICE_VERSION, created_at=AT),
    a.PriceVersion: a.PriceVersion(id="3", version=PRICE_VERSION, created_at=AT, prices={
        "credits_per_usd": "1000", "tiers": {"starter": {"markup": "0.4"}},
        "power_levels": {"balanced": {"multiplier": "0.25", "models": ["gpt-4o-mini"]}},
        "models": {"gpt-4o-mini": [{"deployment": "gpt-4o-mini-1", "provider": "openai",
                                    "input_cost_per_token": "0.00000015", "output_cost_per_token": "0.0000006",
                                    "output_cost_per_image": None,
                                    "source": {"input_cost_per_token": "litellm_model_info",
                                               "output_cost_per_token": "litellm_model_info"}}]},
        "wildcard_routes": {}}),
    a.ProviderKey: PROVIDER_KEY,
    a.ProviderKeyRemoved: a.ProviderKeyRemoved(provider="openai", scope="user", deleted=True),
    a.ProviderKeyTest: a.ProviderKeyTest(ok=True, status=200, message="The provider accepted the key."),
    a.ProviderUsage: a.ProviderUsage(provider="openai", scope="user", requests=3, prompt_tokens=40,
                                     completion_tokens=9, list_price_millicredits=123),
    a.Model: MODEL,
    a.ModelList: a.ModelList(data=[MODEL]),
    a.CategorizedModels: a.CategorizedModels(platform=[MODEL], byok=[]),
    a.DeadLetter: a.DeadLetter(
        id="1207", org_id=ORG, code="llm_usage", transaction_id="req_01jcz8g2k4m6p8r0t2v4x6z8b0", occurred_at=AT,
        properties={"model": "gpt-4o-mini", "prompt_tokens": 310, "completion_tokens": 42,
                    "charged_millicredits": 2_500, "list_price_millicredits": 2_000, "usage_source": "provider"},
        attempts=1, last_status=400, last_error="HTTP 400", created_at=AT, dead_at=AT),
    a.BudgetAlert: a.BudgetAlert(id="31", scope="allocation", user_id=USER, threshold=80,
                                 period_start=datetime(2026, 11, 1, tzinfo=UTC), used_millicredits=40_200,
                                 budget_millicredits=50_000, fired_at=AT),
    a.AlertThresholds: a.AlertThresholds(pool=[50, 80, 100], allocation=[80, 100]),
}


def example(declared: Any) -> msgspec.Struct | None:
    """The example of a declared body; a listing's (`Listing[Org]`) is a page of its item's example."""
    if typing.get_origin(declared) is a.Listing:
        item = EXAMPLES.get(typing.get_args(declared)[0])
        return None if item is None else a.Listing(data=[item], has_more=False)
    return EXAMPLES.get(declared)
