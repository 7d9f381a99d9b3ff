"""Every answer body of the caller's and the admin routes, declared once (STYLE.md 14).

The declarations generate the answers' schemas in /openapi.json. The answers the API composes itself
(BYOK keys, request records, models, deletions) are built as these structs and rendered by
`json_response`; the rows the stores return pass through as they are (re-building them would only cost
time), and tests/admin/test_answers.py holds the real stores' answers to these declarations, field for
field. A tier and a power level are the request bodies' own declarations, so the configured
vocabularies show in both. Amounts are integer millicredits; times are RFC 3339 in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from proxy.api.bodies import PowerLevel, Tier

T = TypeVar("T")
Millicredits = Annotated[int, Meta(description="Millicredits (1,000 = 1 credit).")]
Role = Literal["member", "admin"]
Period = Literal["none", "day", "week", "month"]
SuspendedBy = Literal["operator", "org_admin"]
Scope = Literal["user", "org"]


PriceVersionId = Annotated[str | None, Meta(
    description="The prices the request was held and charged at (GET /admin/price-versions/{version}); null for "
                "requests from before price versions were recorded.", examples=["pv_3f9a0c1e5b7d2468"])]


class Answer(msgspec.Struct, kw_only=True):
    """The base of every answer body."""


class ErrorDetail(Answer):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(Answer):
    """Every error (CONTRACT.md, Errors)."""

    error: ErrorDetail


class Listing(Answer, Generic[T]):
    """A page: `has_more` says whether `after` = the last row's `id` gives another."""

    data: list[T]
    has_more: bool


# ---------------------------------------------------------------------------------------------- admin


class Pool(Answer):
    """An org's pool: balance = granted - posted - overage; available = balance - held, never below 0."""

    balance: Millicredits
    held: Millicredits
    available: Millicredits
    overage: Millicredits
    granted: Millicredits
    posted: Millicredits
    version: int


class Org(Answer):
    id: str
    name: str
    tier: Tier
    suspended: bool
    created_at: datetime


class MemberFields(Answer):
    """What a membership says of a member: role, allocation, default org, power level, suspension."""

    user_id: str
    role: Role
    allocation_millicredits: Millicredits | None
    allocation_period: Period
    default: bool
    power_level: PowerLevel | None
    suspended: bool
    suspended_by: SuspendedBy | None
    created_at: datetime
    updated_at: datetime


class Member(MemberFields):
    """A membership as PUT /admin/orgs/{org}/members/{user} answers it."""

    org_id: str


class OrgMember(MemberFields):
    """A member as GET /admin/orgs/{org} lists them, with the user's email and name and their allocation
    this period (what their own GET /v1/credits says)."""

    email: str
    name: str
    allocation: Allocation


class MemberDetail(OrgMember):
    """GET /admin/orgs/{org}/members/{user}: one member, their allocation used and remaining."""

    org_id: str


class OrgDetail(Org):
    pool: Pool
    members: list[OrgMember]


class Credit(Answer):
    """A grant or an adjustment, and the pool after it. `replayed`: the idempotency key was seen before
    with the same fields, and nothing moved again."""

    id: str
    org_id: str
    kind: Literal["grant", "adjustment"]
    amount_millicredits: Millicredits
    reason: str
    idempotency_key: str
    expires_at: datetime | None
    expired_at: datetime | None
    forfeited_millicredits: Millicredits | None
    actor: str
    created_at: datetime
    replayed: bool
    pool: Pool


class JournalEntry(Answer):
    """One ledger entry: each moves the pool by its deltas (balance = granted - posted - overage)."""

    id: str
    kind: Literal["grant", "grant_expiry", "adjustment", "hold", "post", "void", "expire", "late_post", "correction"]
    amount_millicredits: Millicredits
    balance_delta: Millicredits
    held_delta: Millicredits
    granted_delta: Millicredits
    posted_delta: Millicredits
    overage_delta: Millicredits
    version: int
    request_id: str | None
    user_id: str | None
    actor: str | None
    reason: str | None
    created_at: datetime
    price_version: PriceVersionId = None  # of the entry's request (its hold); null without one


class Usage(Answer, kw_only=True):
    """Usage totals of one group: the group's key is `user`, `model`, `day` (YYYY-MM-DD, UTC),
    `price_version`, `key_id`, `end_user` (null: requests without a `user`), `tag` (a request counts in each of
    its tags, so tag totals may exceed the total; null: untagged requests) or `power_level` (the level that
    served it; null: recorded before levels were kept)."""

    user: str | UnsetType = UNSET
    model: str | None | UnsetType = UNSET
    day: str | UnsetType = UNSET
    price_version: PriceVersionId | UnsetType = UNSET
    key_id: Annotated[str, Meta(description="The API key's id (never the key).")] | UnsetType = UNSET
    end_user: Annotated[str | None, Meta(description="The OpenAI `user` field the requests carried.")] | UnsetType = (
        UNSET)
    tag: Annotated[str | None, Meta(description="One X-Tags tag.")] | UnsetType = UNSET
    power_level: Annotated[str | None, Meta(description="The power level that served the requests.")] | UnsetType = (
        UNSET)
    requests: int
    prompt_tokens: int | None
    completion_tokens: int | None
    charged_millicredits: Millicredits | None
    list_price_millicredits: Millicredits | None


class AuditEntry(Answer):
    id: str
    actor: Annotated[str, Meta(description="'operator', or the org admin's usr_ id.")]
    action: str
    org_id: str | None
    target: str | None
    detail: dict[str, Any]
    created_at: datetime


class User(Answer):
    id: str
    email: str
    name: str
    created_at: datetime


class KeyUsage(Answer):
    """A key's spend in its limit period (millicredits): `available` is what its limit leaves (null: no limit)."""

    limit: int | None
    used: int
    held: int
    available: int | None
    period: str
    resets_at: datetime | None


class ApiKey(Answer):
    """An API key as listings show it: its prefix, never the key."""

    id: str
    user_id: str
    org_id: Annotated[str | None, Meta(description="The org the key is bound to; null: any of the user's orgs.")]
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    revoked: bool
    models: Annotated[list[str] | None, Meta(description="null: every model the org's tier allows.")]
    routes: Annotated[list[str] | None, Meta(description="Path prefixes; null: every route.")]
    read_only: bool
    limit_millicredits: Annotated[int | None, Meta(description="The key's own spend limit; null: none.")]
    limit_period: str
    usage: Annotated[KeyUsage | None, Meta(description="Its spend this period in its bound org; null if unbound.")]


class CreatedApiKey(ApiKey):
    key: Annotated[str, Meta(description="The key itself: shown in this answer only, stored as a hash.")]


class MemberRemoved(Answer):
    org_id: str
    user_id: str
    deleted: bool


class DeadLetter(Answer):
    """An export event no longer retried (proxy/export/): the receiver refused it with a 4xx, or it failed
    CREDITGATE_EXPORT_MAX_ATTEMPTS times. `properties` is the event's, as it is sent."""

    id: Annotated[str, Meta(description="The event's id (a decimal string); also the page cursor.")]
    org_id: str
    code: Literal["llm_usage", "llm_usage_correction", "credit_grant", "credit_adjustment", "credit_grant_expiry",
                  "budget_alert"]
    transaction_id: str
    occurred_at: datetime
    properties: dict[str, Any]
    attempts: int
    last_status: Annotated[int | None, Meta(description="The receiver's last HTTP status; null: no answer.")]
    last_error: str | None
    created_at: datetime
    dead_at: Annotated[datetime | None, Meta(description="Null once retried (the retry's answer).")]


class BudgetAlert(Answer):
    """A budget threshold crossed, once per threshold per period: the pool's (spent + held against granted;
    its period starts at its latest grant) or a member's allocation (used + held against the limit)."""

    id: str
    scope: Literal["pool", "allocation"]
    user_id: Annotated[str | None, Meta(description="The member (allocation alerts); null for the pool.")]
    threshold: Annotated[int, Meta(description="Percent.")]
    period_start: datetime
    used_millicredits: Millicredits
    budget_millicredits: Annotated[int, Meta(description="Granted credit (pool) or the allocation limit.")]
    fired_at: datetime


class AlertThresholds(Answer):
    pool: Annotated[list[int], Meta(description="Percents of the pool's granted credit.")]
    allocation: Annotated[list[int], Meta(description="Percents of each member's allocation limit.")]


# ---------------------------------------------------------------------------------------------- caller


class PoolCredit(Answer):
    balance: Millicredits
    held: Millicredits
    available: Millicredits


class Allocation(Answer):
    limit: Annotated[int | None, Meta(description="Millicredits per period; null: unlimited within the pool.")]
    used: Millicredits
    held: Millicredits
    available: Millicredits
    period: Period
    resets_at: datetime | None


class KeyCredit(Answer):
    """The calling key's spend in this org this period: `limit` null = no limit of its own."""

    id: str
    limit: int | None
    used: int
    held: int
    available: int
    period: str
    resets_at: datetime | None


class Credits(Answer):
    """GET /v1/credits: the active org's pool, the caller's allocation in it, and the calling key's own limit
    (its third bound): `available` there is the smallest of the three."""

    org_id: str
    pool: PoolCredit
    allocation: Allocation
    key: Annotated[KeyCredit | None, Meta(description="null when the caller is not an API key.")] = None


class RequestRecord(Answer):
    """GET /v1/requests/{request_id}: a request's hold and, once settled, its charge."""

    request_id: str
    status: Literal["pending", "settled", "voided"]
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    held_millicredits: Millicredits
    charged_millicredits: Millicredits | None
    list_price_millicredits: Millicredits | None
    usage_source: Literal["provider", "estimate", "checkpoint", "prompt_only"] | None
    byok: bool
    price_version: PriceVersionId = None


class PriceVersionSummary(Answer):
    """A price version the gateway has charged with (GET /admin/price-versions), newest first."""

    id: str
    version: Annotated[str, Meta(examples=["pv_3f9a0c1e5b7d2468"])]
    created_at: datetime


class PriceVersion(PriceVersionSummary):
    """GET /admin/price-versions/{version}: the table a version names. `version` is "pv_" and the first 16 hex
    digits of the SHA-256 of `prices` written as canonical JSON (keys sorted, separators "," and ":", no
    spaces). Decimals are text; each deployment's `source` says where each price came from (`config`: the
    LiteLLM config; `litellm_model_info`: LiteLLM's model info, its cost map)."""

    prices: dict[str, Any]


class ProviderKey(Answer):
    """A stored provider key (BYOK), masked. `active` (listings only): the key a request would use, as
    the member's enabled key beats the org's."""

    provider: str
    scope: Scope
    masked_key: Annotated[str, Meta(examples=["****0001"])]
    enabled: bool
    created_at: datetime | None
    updated_at: datetime | None
    active: bool | UnsetType = UNSET


class ProviderKeyRemoved(Answer):
    provider: str
    scope: Scope
    deleted: bool


class ProviderKeyTest(Answer):
    """A one-token call with the key (not billed): `ok` when the provider accepted it."""

    ok: bool
    status: int
    message: str


class ProviderUsage(Answer):
    """What was served with a provider key (BYOK): nothing of it was charged to the pool."""

    provider: str
    scope: Scope
    requests: int
    prompt_tokens: int
    completion_tokens: int
    list_price_millicredits: Millicredits


class Model(Answer, kw_only=True):
    """OpenAI's model object, and the power levels whose list names it (OpenAI's SDKs ignore the field)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    power_levels: list[str] = msgspec.field(default_factory=list)


class ModelList(Answer, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


class CategorizedModels(Answer):
    """`byok`: the models that run on a provider key of the caller's or their org's; `platform`: the rest."""

    platform: list[Model]
    byok: list[Model]
