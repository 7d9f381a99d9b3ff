"""Every request body of the caller's and the admin routes, declared once (STYLE.md 14).

A declaration decodes and validates the body (proxy/api/decode.py: msgspec's types and constraints,
then each field's `Rule`), and generates its schema in /openapi.json (proxy/api/openapi.py). Tiers,
power levels and providers come from the configuration at start-up: a `Rule` names the vocabulary
and the reader is given its values. Field order is the order faults are reported in.

Why msgspec rather than pydantic v2, measured (bench/json_layer.py, one process, ratios to orjson.loads
parsing the same bytes without validating): decoding and validating costs msgspec 0.7x (PUT member) to
2.8x (a grant: its text patterns run in Python's `re`), pydantic's strict `model_validate_json` 4.2x to
5.3x; with the Rules and vocabularies the routes' `BodyReader.decode` is 1.7x to 5.4x, about 1 us, as
fast as pydantic at worst and far below a database round trip either way. Encoding a 50-row listing:
msgspec 0.6x, pydantic 3.6x of orjson. Importing: msgspec 5 ms, pydantic 39 ms, paid by every worker
and every `creditgate` command. So speed does not decide; the rest does: msgspec is strict as it
stands (no "5" for 5, no true for 1, no 1.0 for an int: what the hand-written getters refused), one
small package with no dependencies (0.7 MB installed; pydantic brings four more, 10 MB), and
`msgspec.json.schema_components` writes JSON Schema 2020-12, what OpenAPI 3.1 embeds. What it lacks,
structured error locations, the contract could not use as they are: the reader names the failing field
itself, in a fixed order, with the declaration's own message.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from msgspec import UNSET, Meta, UnsetType

from proxy.api.decode import Body, Rule
from proxy.directory.ids import is_id

MAX_AMOUNT = 10**15  # millicredits ($1bn): far beyond any real grant, far below bigint overflow in sums

# A character that is not a space, and no NUL (PostgreSQL text cannot hold one; asyncpg would answer a
# 500). msgspec checks max_length before a pattern, so a pattern never runs over a long string.
_TEXT = r"^\s*[^\s\x00][^\x00]*$"
_EMAIL = r"^\s*[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+\s*$"
_TOKEN = "[A-Za-z0-9_-]{1,64}$"  # proxy/directory/ids.py; the Rule's test is the exact check

Text200 = Annotated[
    str, Meta(max_length=200, pattern=_TEXT, description="Trimmed of surrounding spaces."),
    Rule("'{name}' must be a non-empty string of at most 200 characters.", trim=True),
]
Text500 = Annotated[
    str, Meta(max_length=500, pattern=_TEXT, description="Trimmed of surrounding spaces."),
    Rule("'{name}' must be a non-empty string of at most 500 characters.", trim=True),
]
Flag = Annotated[bool, Rule("'{name}' must be true or false.")]
Tier = Annotated[str, Meta(description="A tier of the policy file."),
                 Rule("'{name}' must be one of: {tiers}.", vocabulary="tiers")]
PowerLevel = Annotated[str, Meta(description="A power level of the policy file; null: the policy file's default."),
                       Rule("'{name}' must be one of: {power_levels}, or null.", vocabulary="power_levels")]
UserId = Annotated[str, Meta(extra_json_schema={"pattern": f"^usr_{_TOKEN}"}),
                   Rule("'{name}' must be an id starting with 'usr_'.", test=lambda v: is_id(v, "usr"))]
OrgId = Annotated[str, Meta(extra_json_schema={"pattern": f"^org_{_TOKEN}"}),
                  Rule("'{name}' must be an id starting with 'org_'.", test=lambda v: is_id(v, "org"))]
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"}, description="RFC 3339, with an offset."),
                      Rule("'{name}' must be an RFC 3339 timestamp string.")]


# ---------------------------------------------------------------------------------------------- admin


class CreateOrg(Body):
    """POST /admin/orgs."""

    name: Annotated[Text200, Meta(examples=["Acme"])]
    tier: Tier


class PatchOrg(Body):
    """PATCH /admin/orgs/{org}: at least one of the two; null `suspended` leaves it as it is."""

    tier: Tier | UnsetType = UNSET
    suspended: Flag | None = None


class Grant(Body):
    """POST /admin/orgs/{org}/grants: funds the pool, idempotent by `idempotency_key` (the same key with
    other fields is 409)."""

    amount_millicredits: Annotated[int, Meta(ge=1, le=MAX_AMOUNT, description="Millicredits (1,000 = 1 credit)."),
                                   Rule(f"'{{name}}' must be a positive integer of at most {MAX_AMOUNT}.")]
    reason: Text500
    idempotency_key: Text200
    expires_at: Annotated[Timestamp, Meta(description="In the future; unspent credit then is forfeited.")] | None = None


class Adjustment(Body):
    """POST /admin/orgs/{org}/adjustments: a signed correction (a refund is positive); a negative one may
    not exceed the available credit. Idempotent by `idempotency_key`."""

    amount_millicredits: Annotated[
        int, Meta(ge=-MAX_AMOUNT, le=MAX_AMOUNT, extra_json_schema={"not": {"const": 0}}),
        Rule(f"'{{name}}' must be a non-zero integer of at most {MAX_AMOUNT}.", test=lambda v: v != 0),
    ]
    reason: Text500
    idempotency_key: Text200


class CreateUser(Body):
    """POST /admin/users: the email is stored trimmed and lower-case, and must be unused (409)."""

    email: Annotated[str, Meta(max_length=254, pattern=_EMAIL, examples=["ann@acme.test"]),
                     Rule("'{name}' must be an email address of at most 254 characters.", trim=True)]
    name: Text200 | None = None


class PutMember(Body):
    """PUT /admin/orgs/{org}/members/{user}: the operator adds or changes a member, an org admin changes
    an existing member of their org. Only the fields sent change; null `allocation_millicredits` is
    unlimited (within the pool), null `power_level` the policy file's default. `default` is the
    operator's; so is lifting a suspension the operator set."""

    role: Annotated[Literal["member", "admin"], Rule("'{name}' must be one of: admin, member.")] | UnsetType = UNSET
    allocation_millicredits: Annotated[
        int, Meta(ge=0, le=MAX_AMOUNT, description="Per allocation period; null: unlimited within the pool."),
        Rule(f"'{{name}}' must be null or an integer from 0 to {MAX_AMOUNT}."),
    ] | None | UnsetType = UNSET
    allocation_period: Annotated[
        Literal["none", "day", "week", "month"], Meta(description="Calendar periods in UTC."),
        Rule("'{name}' must be one of: day, month, none, week."),
    ] | UnsetType = UNSET
    default: Annotated[Flag, Meta(description="The user's default org (the operator's)")] | None | UnsetType = UNSET
    power_level: PowerLevel | None | UnsetType = UNSET
    suspended: Flag | None | UnsetType = UNSET


# a scoped key's lists (proxy/directory/scopes.py checks each entry's form after decoding)
KeyModels = Annotated[
    list[Annotated[str, Meta(min_length=1, max_length=128)]],
    Meta(min_length=1, max_length=32,
         description="Model names the key may use (auto and downgrades choose among them); null: every model the "
                     "org's tier allows.", examples=[["gpt-4o-mini"]]),
    Rule("'{name}' must be null or a list of 1 to 32 model names."),
]
KeyRoutes = Annotated[
    list[Annotated[str, Meta(min_length=1, max_length=128)]],
    Meta(min_length=1, max_length=32,
         description="Path prefixes the key may call ('/api/v1/llm' is '/v1'); null: every route.",
         examples=[["/v1/chat/completions", "/v1/credits"]]),
    Rule("'{name}' must be null or a list of 1 to 32 paths."),
]
KeyReadOnly = Annotated[Flag, Meta(description="GET (and HEAD) only.")]
KeyLimit = Annotated[
    int, Meta(ge=0, le=MAX_AMOUNT, description="The key's own spend limit per limit_period, held in the same "
                                               "reserve as the pool and the allocation; null: none. The key "
                                               "must be bound to an org."),
    Rule(f"'{{name}}' must be null or an integer from 0 to {MAX_AMOUNT}."),
]
KeyPeriod = Annotated[
    Literal["none", "day", "week", "month"], Meta(description="Calendar periods in UTC."),
    Rule("'{name}' must be one of: day, month, none, week."),
]


class CreateKey(Body):
    """POST /admin/keys: an API key for `user_id`, bound to `org_id` when given (an org admin's key is
    always bound to their org), optionally scoped: models, routes, read-only, its own spend limit. The key
    is in the answer only."""

    user_id: UserId
    org_id: OrgId | None = None
    name: Annotated[Text200, Meta(examples=["laptop"])] | None = None
    models: KeyModels | None = None
    routes: KeyRoutes | None = None
    read_only: KeyReadOnly = False
    limit_millicredits: KeyLimit | None = None
    limit_period: KeyPeriod = "none"


class PatchKey(Body):
    """PATCH /admin/keys/{key}: only the fields sent change (null clears a list or the limit); every replica
    applies the change within a second."""

    name: Text200 | UnsetType = UNSET
    models: KeyModels | None | UnsetType = UNSET
    routes: KeyRoutes | None | UnsetType = UNSET
    read_only: KeyReadOnly | UnsetType = UNSET
    limit_millicredits: KeyLimit | None | UnsetType = UNSET
    limit_period: KeyPeriod | UnsetType = UNSET


Thresholds = Annotated[
    list[Annotated[int, Meta(ge=1, le=100)]],
    Meta(max_length=10, description="Whole percents; an empty list turns this scope's alerts off."),
    Rule("'{name}' must be a list of at most 10 whole percents from 1 to 100."),
]


class PutAlertThresholds(Body):
    """PUT /admin/orgs/{org}/alert-thresholds: the budget alert thresholds of the pool (share of granted
    credit spent or held) and of each member's allocation (share of the limit used or held in the period);
    only the scopes sent change."""

    pool: Annotated[Thresholds, Meta(examples=[[50, 80, 100]])] | UnsetType = UNSET
    allocation: Thresholds | UnsetType = UNSET


# ---------------------------------------------------------------------------------------------- caller


class PutProviderKey(Body):
    """POST /v1/byok/keys: stores (or replaces, enabled) the caller's own key for a provider, or the
    org's (`scope: org`, org admins only). The key is stored encrypted and never shown again."""

    NULL_IS_MISSING: ClassVar[bool] = True

    provider: Annotated[str, Meta(description="A provider of the configured models (case is ignored).",
                                  examples=["openai"]),
                        Rule("Unknown provider; expected one of: {providers}.")]
    # checked after trimming (proxy/caller/byok.py), so the schema's limits are the trimmed key's
    api_key: Annotated[str, Meta(description="8 to 4096 printable ASCII characters without spaces.",
                                 extra_json_schema={"minLength": 8, "maxLength": 4096, "writeOnly": True}),
                       Rule("'{name}' must be a string.")]
    scope: Annotated[Literal["user", "org"], Rule("'{name}' must be 'user' or 'org'.")] = "user"

    def __repr__(self) -> str:  # the key never reaches a log or a traceback (STYLE.md 8)
        return f"PutProviderKey(provider={self.provider!r}, api_key=<hidden>, scope={self.scope!r})"


class ToggleProviderKey(Body):
    """POST /v1/byok/keys/{provider}/toggle."""

    enabled: Flag



