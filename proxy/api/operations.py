"""The route table /openapi.json is generated from: one `Operation` per method and path of the caller's
and the admin routes (and, loosely, the billed OpenAI routes), naming its declared request and answer
bodies. tests/api/test_operations.py checks it against the routes the app mounts, both ways.

Client paths are documented under `/v1`; the same routes are served under `/api/v1/llm` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from proxy.api import answers as a
from proxy.api import bodies as b
from proxy.api.decode import Body
from proxy.api.jsonapi import MAX_LIMIT

Schema = dict[str, Any]
# who may call: the operator only (admin token), the operator or an org admin (their API key), any API key
Access = Literal["operator", "org_admin", "api_key"]
OPENAI: Schema = {"type": "object", "additionalProperties": True,
                  "description": "OpenAI-compatible; see the OpenAI API reference."}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    schema: Schema
    description: str = ""


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str  # as Starlette mounts it, without converters: /admin/orgs/{org}
    operation_id: str
    summary: str
    access: Access
    answers: dict[int, Any]  # status -> declared answer (a struct, `Listing[...]`, or a raw schema)
    body: type[Body] | Schema | None = None
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()  # beyond 400 and 401 (every route), 403 (admin), 413 (bodies)
    media: str = "application/json"  # of the success answers (the CSV downloads: text/csv)

    @property
    def tag(self) -> str:
        if self.path.startswith("/admin/"):
            return "admin"
        return "billed" if self.body is OPENAI else "caller"


def _id(kind: str) -> Schema:
    return {"type": "string", "pattern": f"^{kind}_[A-Za-z0-9_-]{{1,64}}$"}


TIME: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339, with an offset."}
PATH_PARAMS: dict[str, Schema] = {
    "org": _id("org"), "user": _id("usr"), "key": _id("key"),
    "provider": {"type": "string", "examples": ["openai"]},
    "request_id": {"type": "string", "maxLength": 64, "description": "X-Request-Id as sent, or the generated req_ id"},
    "model_id": {"type": "string", "examples": ["gpt-4o-mini"]},
    "version": {"type": "string", "pattern": "^pv_[0-9a-f]{16}$"},
    "event": {"type": "string", "pattern": "^[0-9]{1,19}$", "description": "A dead-lettered export event's id"},
}
PAGE = (Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}),
        Param("after", {"type": "string"}, "The last row's id of the previous page."))
WINDOW = (Param("start", TIME, "From this time (inclusive)."), Param("end", TIME, "To this time (exclusive)."))
SCOPE = (Param("scope", {"enum": ["user", "org"], "default": "user"}, "The org's key: org admins only."),)


def _group_by(*groups: str) -> Param:
    return Param("group_by", {"enum": list(groups), "default": "model"},
                 "tag: a request counts in each of its X-Tags (tag totals may exceed the total); null groups "
                 "requests without one. At most 1000 groups (has_more: narrow the period or filter)."
                 if "tag" in groups else "")


ATTRIBUTION = (
    Param("end_user", {"type": "string", "minLength": 1, "maxLength": 256},
          "Only requests whose OpenAI `user` field was this."),
    Param("tag", {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}, "Only requests with this X-Tags tag."),
)
CSV_WINDOW = (Param("start", TIME, "Required. From this time (inclusive)."),
              Param("end", TIME, "Required. To this time (exclusive), at most 93 days after start."))
CSV: Schema = {
    "type": "string",
    "description": "RFC 4180 CSV (CRLF lines), streamed, `Content-Disposition: attachment`. A header row, then one "
                   "row per usage record, oldest first: request_id, recorded_at (RFC 3339 UTC), user_id, key_id, "
                   "end_user, tags (joined by ';'), model, prompt_tokens, completion_tokens, charged_millicredits, "
                   "list_price_millicredits, usage_source, byok (true/false), price_version. Text cells starting "
                   "with = + - @ are prefixed with ' (CSV injection); an absent value is an empty cell.",
    "examples": ["request_id,recorded_at,user_id,key_id,end_user,tags,model,prompt_tokens,completion_tokens,"
                 "charged_millicredits,list_price_millicredits,usage_source,byok,price_version\r\n"
                 "req_1,2026-11-01T09:30:00.000000Z,usr_1,key_1,customer-42,support;beta,gpt-4o-mini,120,30,"
                 "45,18,provider,false,pv_3f9a0c1e5b7d2468\r\n"],
}


ADMIN = [
    Operation("POST", "/admin/orgs", "createOrg", "Create an org", "operator", {201: a.Org}, b.CreateOrg),
    Operation("GET", "/admin/orgs", "listOrgs", "List orgs", "operator", {200: a.Listing[a.Org]}, query=PAGE),
    Operation("GET", "/admin/orgs/{org}", "getOrg", "An org with its pool and members", "org_admin",
              {200: a.OrgDetail}, errors=(404,)),
    Operation("PATCH", "/admin/orgs/{org}", "updateOrg", "Change an org's tier or suspension", "operator",
              {200: a.Org}, b.PatchOrg, errors=(404,)),
    Operation("POST", "/admin/orgs/{org}/grants", "grantCredits", "Fund the pool (idempotent)", "operator",
              {200: a.Credit}, b.Grant, errors=(404, 409)),
    Operation("POST", "/admin/orgs/{org}/adjustments", "adjustCredits", "A signed correction, e.g. a refund",
              "operator", {200: a.Credit}, b.Adjustment, errors=(404, 409)),
    Operation("GET", "/admin/orgs/{org}/usage", "getOrgUsage",
              "Usage totals by user, model, day, price version, key, end user or tag", "org_admin",
              {200: a.Listing[a.Usage]},
              query=(_group_by("user", "model", "day", "price_version", "key_id", "end_user", "tag", "power_level"),
                     Param("user_id", _id("usr")), *ATTRIBUTION, *WINDOW), errors=(404,)),
    Operation("GET", "/admin/orgs/{org}/usage.csv", "downloadOrgUsage",
              "The org's usage records of a period as CSV (a download)", "org_admin", {200: CSV},
              query=(Param("user_id", _id("usr")), *ATTRIBUTION, *CSV_WINDOW), errors=(404,), media="text/csv"),
    Operation("GET", "/admin/orgs/{org}/ledger", "listOrgLedger", "The org's journal, newest first", "org_admin",
              {200: a.Listing[a.JournalEntry]}, query=(Param("user_id", _id("usr")), *PAGE), errors=(404,)),
    Operation("GET", "/admin/orgs/{org}/audit", "listOrgAudit", "Who changed what in the org, newest first",
              "org_admin", {200: a.Listing[a.AuditEntry]}, query=PAGE, errors=(404,)),
    Operation("GET", "/admin/audit", "listAudit", "Every admin action, newest first", "operator",
              {200: a.Listing[a.AuditEntry]}, query=(Param("org_id", _id("org")), *PAGE)),
    Operation("GET", "/admin/orgs/{org}/members/{user}", "getMember",
              "A member with their allocation used and remaining this period", "org_admin", {200: a.MemberDetail},
              errors=(404,)),
    Operation("PUT", "/admin/orgs/{org}/members/{user}", "putMember",
              "Add or change a member (only the fields sent change)", "org_admin", {200: a.Member}, b.PutMember,
              errors=(404,)),
    Operation("DELETE", "/admin/orgs/{org}/members/{user}", "removeMember", "Remove a member (history stays)",
              "org_admin", {200: a.MemberRemoved}, errors=(404,)),
    Operation("POST", "/admin/users", "createUser", "Create a user", "operator", {201: a.User}, b.CreateUser,
              errors=(409,)),
    Operation("GET", "/admin/users", "listUsers", "List users, or find one by email", "operator",
              {200: a.Listing[a.User]}, query=(Param("email", {"type": "string", "format": "email"}), *PAGE)),
    Operation("POST", "/admin/keys", "createKey", "Create an API key (shown once)", "org_admin",
              {201: a.CreatedApiKey}, b.CreateKey, errors=(404,)),
    Operation("GET", "/admin/keys", "listKeys", "List API keys (their prefix only)", "org_admin",
              {200: a.Listing[a.ApiKey]}, query=(Param("user_id", _id("usr")), Param("org_id", _id("org")), *PAGE)),
    Operation("PATCH", "/admin/keys/{key}", "updateKey",
              "Change a key's name, scope or spend limit (every replica within a second)", "org_admin",
              {200: a.ApiKey}, b.PatchKey, errors=(404, 503)),
    Operation("DELETE", "/admin/keys/{key}", "revokeKey", "Revoke a key on every replica within a second",
              "org_admin", {200: a.ApiKey}, errors=(404, 503)),
    Operation("GET", "/admin/orgs/{org}/alerts", "listOrgAlerts", "The budget alerts fired, newest first",
              "org_admin", {200: a.Listing[a.BudgetAlert]}, query=PAGE, errors=(404,)),
    Operation("GET", "/admin/orgs/{org}/alert-thresholds", "getAlertThresholds",
              "The budget alert thresholds of the pool and of each allocation", "org_admin",
              {200: a.AlertThresholds}, errors=(404,)),
    Operation("PUT", "/admin/orgs/{org}/alert-thresholds", "putAlertThresholds",
              "Change the budget alert thresholds (only the scopes sent)", "org_admin", {200: a.AlertThresholds},
              b.PutAlertThresholds, errors=(404,)),
    Operation("GET", "/admin/export/dead-letters", "listDeadLetters", "Export events no longer retried, newest first",
              "operator", {200: a.Listing[a.DeadLetter]}, query=PAGE),
    Operation("POST", "/admin/export/dead-letters/{event}/retry", "retryDeadLetter",
              "Put a dead-lettered export event back in the queue", "operator", {200: a.DeadLetter},
              errors=(404,)),
    Operation("GET", "/admin/price-versions", "listPriceVersions", "The price versions charged with, newest first",
              "operator", {200: a.Listing[a.PriceVersionSummary]}, query=PAGE),
    Operation("GET", "/admin/price-versions/{version}", "getPriceVersion",
              "The prices, markups and multipliers of one price version", "operator", {200: a.PriceVersion},
              errors=(404,)),
]

CALLER = [
    Operation("GET", "/v1/credits", "getCredits", "The active org's pool and the caller's allocation", "api_key",
              {200: a.Credits}),
    Operation("GET", "/v1/credits/history", "listCreditHistory", "The caller's ledger entries, newest first",
              "api_key", {200: a.Listing[a.JournalEntry]}, query=PAGE),
    Operation("POST", "/v1/credits/purchase", "purchaseCredits", "Disabled: credits come from the org's admins",
              "api_key", {410: a.Error}),
    Operation("GET", "/v1/usage", "getUsage", "The caller's usage by model, day, end user, tag or power level",
              "api_key", {200: a.Listing[a.Usage]},
              query=(_group_by("model", "day", "end_user", "tag", "power_level"), *ATTRIBUTION, *WINDOW)),
    Operation("GET", "/v1/usage.csv", "downloadUsage", "The caller's own usage records of a period as CSV",
              "api_key", {200: CSV}, query=(*ATTRIBUTION, *CSV_WINDOW), media="text/csv"),
    Operation("GET", "/v1/requests/{request_id}", "getRequest", "One request's hold and settlement", "api_key",
              {200: a.RequestRecord}, errors=(404,)),
    Operation("GET", "/v1/models", "listModels", "The models the caller may use", "api_key", {200: a.ModelList}),
    Operation("GET", "/v1/models/categorized", "listModelsCategorized", "The caller's models, platform and BYOK",
              "api_key", {200: a.CategorizedModels}),
    Operation("GET", "/v1/models/{model_id}", "getModel", "One model the caller may use", "api_key",
              {200: a.Model}, errors=(404,)),
    Operation("POST", "/v1/byok/keys", "putProviderKey", "Store (or replace) a provider key", "api_key",
              {201: a.ProviderKey}, b.PutProviderKey, errors=(403,)),
    Operation("GET", "/v1/byok/keys", "listProviderKeys", "The caller's and the org's provider keys, masked",
              "api_key", {200: a.Listing[a.ProviderKey]}),
    Operation("DELETE", "/v1/byok/keys/{provider}", "deleteProviderKey", "Delete a provider key", "api_key",
              {200: a.ProviderKeyRemoved}, query=SCOPE, errors=(403, 404)),
    Operation("POST", "/v1/byok/keys/{provider}/toggle", "toggleProviderKey", "Enable or disable a provider key",
              "api_key", {200: a.ProviderKey}, b.ToggleProviderKey, query=SCOPE, errors=(403, 404)),
    Operation("POST", "/v1/byok/keys/{provider}/test", "testProviderKey", "A one-token call with the key (not billed)",
              "api_key", {200: a.ProviderKeyTest}, query=SCOPE, errors=(403, 404, 409)),
    Operation("GET", "/v1/byok/keys/{provider}/usage", "getProviderKeyUsage", "What was served with a provider key",
              "api_key", {200: a.ProviderUsage}, query=SCOPE, errors=(403,)),
]

BILLED_ERRORS = (402, 403, 404, 409, 429, 502, 503, 504)
CLIENT = [
    Operation("POST", f"/v1/{route}", operation_id, f"{summary} (billed; OpenAI-compatible)", "api_key",
              {200: OPENAI}, OPENAI, errors=BILLED_ERRORS)
    for route, operation_id, summary in (
        ("chat/completions", "createChatCompletion", "A chat completion, streamed with stream=true"),
        ("completions", "createCompletion", "A text completion, streamed with stream=true"),
        ("embeddings", "createEmbedding", "Embeddings"),
        ("images/generations", "createImage", "Images"),
        ("responses", "createResponse", "A model response (Responses API), streamed with stream=true"),
    )
]

OPERATIONS: list[Operation] = [*ADMIN, *CALLER, *CLIENT]
