"""Attribution through the real stack (issue 11): chat requests with the OpenAI `user` field and `X-Tags`
through the gateway, LiteLLM and the fake provider; the usage routes grouped and filtered by end user and
tag give exact integers; the CSV download is exact, cell for cell; bad tags or a bad `user` are 400 and
charge nothing."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, Member, make_member
from tests.e2e.test_billing import settled

HEADER = ["request_id", "recorded_at", "user_id", "key_id", "end_user", "tags", "model", "prompt_tokens",
          "completion_tokens", "charged_millicredits", "list_price_millicredits", "usage_source", "byok",
          "price_version"]
MESSAGES = [{"role": "user", "content": "hello attribution"}]


def chat(member: Member, request_id: str, *, user: str | None = None, tags: str | None = None,
         stream: bool = False) -> dict[str, Any]:
    """One chat request through the OpenAI SDK; returns its record once settled."""
    headers = {"X-Request-Id": request_id} | ({"X-Tags": tags} if tags is not None else {})
    end_user = openai.NOT_GIVEN if user is None else user
    client = member.client()
    if stream:
        chunks = client.chat.completions.create(model="fake-small", messages=MESSAGES, stream=True, user=end_user,
                                                stream_options={"include_usage": True}, extra_headers=headers)
        assert sum(1 for _ in chunks) > 0
    else:
        client.chat.completions.create(model="fake-small", messages=MESSAGES, user=end_user, extra_headers=headers)
    return settled(member, request_id)


def recorded(gateway: Gateway, org_id: str) -> dict[str, str]:
    """Each usage record's recorded_at as the CSV writes it, read from PostgreSQL itself."""

    async def read() -> dict[str, str]:
        conn = await asyncpg.connect(gateway.env["CREDITGATE_DATABASE_URL"])
        try:
            rows = await conn.fetch("SELECT request_id, recorded_at FROM creditgate.usage_records WHERE org_id = $1",
                                    org_id)
        finally:
            await conn.close()
        return {r["request_id"]: r["recorded_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for r in rows}

    return asyncio.run(read())


def groups(response: httpx.Response, key: str) -> dict[Any, tuple[int, int, int, int, int]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["has_more"] is False
    return {g[key]: (g["requests"], g["prompt_tokens"], g["completion_tokens"], g["charged_millicredits"],
                     g["list_price_millicredits"]) for g in body["data"]}


def total(*records: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (len(records), sum(r["prompt_tokens"] for r in records), sum(r["completion_tokens"] for r in records),
            sum(r["charged_millicredits"] for r in records), sum(r["list_price_millicredits"] for r in records))


@pytest.fixture(scope="module")
def attributed(gateway: Gateway) -> tuple[Member, Member, dict[str, dict[str, Any]]]:
    """Two members of one org. The first: a chat for customer 42 tagged support and beta, a stream for the
    same customer tagged beta (twice, and with spaces), a chat for a customer whose name is a formula and
    no tags; the second: one chat for customer 7 tagged support. Returns each request's settled record."""
    first = make_member(gateway)
    second = make_member(gateway, org_id=first.org_id)
    # one after the other, each settled before the next: the CSV lists them in this order
    records = {
        "attr-a1": chat(first, "attr-a1", user="customer-42", tags="support,beta"),
        "attr-a2": chat(first, "attr-a2", user="customer-42", tags="beta , beta,", stream=True),
        "attr-a3": chat(first, "attr-a3", user="=HYPERLINK(\"http://x\")"),
        "attr-b1": chat(second, "attr-b1", user="customer-7", tags="support"),
    }
    assert all(r["status"] == "settled" and r["charged_millicredits"] > 0 for r in records.values()), records
    return first, second, records


def test_the_caller_groups_their_own_usage_by_end_user_and_tag(
        attributed: tuple[Member, Member, dict[str, dict[str, Any]]]) -> None:
    first, second, r = attributed
    a1, a2, a3, b1 = r["attr-a1"], r["attr-a2"], r["attr-a3"], r["attr-b1"]
    assert groups(first.get("/v1/usage", params={"group_by": "end_user"}), "end_user") == {
        "customer-42": total(a1, a2), "=HYPERLINK(\"http://x\")": total(a3)}
    # a request counts in each of its tags: support + beta + untagged is more than the total
    assert groups(first.get("/v1/usage", params={"group_by": "tag"}), "tag") == {
        "beta": total(a1, a2), "support": total(a1), None: total(a3)}
    assert groups(first.get("/v1/usage", params={"group_by": "model", "tag": "beta"}), "model") == {
        "fake-small": total(a1, a2)}
    assert groups(first.get("/api/v1/llm/usage", params={"group_by": "tag", "end_user": "customer-42"}), "tag") == {
        "beta": total(a1, a2), "support": total(a1)}
    # the second member sees only their own
    assert groups(second.get("/v1/usage", params={"group_by": "end_user"}), "end_user") == {"customer-7": total(b1)}
    assert groups(second.get("/v1/usage", params={"group_by": "tag", "end_user": "customer-42"}), "tag") == {}


def test_the_org_admin_groups_the_orgs_usage_by_end_user_tag_and_key(
        gateway: Gateway, attributed: tuple[Member, Member, dict[str, dict[str, Any]]]) -> None:
    first, second, r = attributed
    a1, a2, a3, b1 = r["attr-a1"], r["attr-a2"], r["attr-a3"], r["attr-b1"]
    path = f"/admin/orgs/{first.org_id}/usage"
    with httpx.Client(base_url=gateway.url, headers={
            "authorization": f"Bearer {gateway.env['CREDITGATE_ADMIN_TOKEN']}"}) as admin:
        assert groups(admin.get(path, params={"group_by": "tag"}), "tag") == {
            "beta": total(a1, a2), "support": total(a1, b1), None: total(a3)}
        assert groups(admin.get(path, params={"group_by": "end_user"}), "end_user") == {
            "customer-42": total(a1, a2), "customer-7": total(b1), "=HYPERLINK(\"http://x\")": total(a3)}
        assert groups(admin.get(path, params={"group_by": "key_id"}), "key_id") == {
            first.key_id: total(a1, a2, a3), second.key_id: total(b1)}
        assert groups(admin.get(path, params={"group_by": "user", "tag": "support"}), "user") == {
            first.user_id: total(a1), second.user_id: total(b1)}
        refused = admin.get(path, params={"group_by": "tag", "tag": "no spaces"})
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, "tag")


def test_the_csv_download_is_exact_and_each_caller_gets_only_their_rows(
        gateway: Gateway, attributed: tuple[Member, Member, dict[str, dict[str, Any]]]) -> None:
    first, second, r = attributed
    at = recorded(gateway, first.org_id)
    start = datetime.now(UTC) - timedelta(days=1)
    window = {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "end": (start + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    version = r["attr-a1"]["price_version"]
    assert isinstance(version, str) and version.startswith("pv_")

    def row(who: Member, rid: str, end_user: str, tags: str) -> list[str]:
        rec = r[rid]
        return [rid, at[rid], who.user_id, who.key_id, end_user, tags, "fake-small", str(rec["prompt_tokens"]),
                str(rec["completion_tokens"]), str(rec["charged_millicredits"]), str(rec["list_price_millicredits"]),
                "provider", "false", version]

    a1, a2 = row(first, "attr-a1", "customer-42", "support;beta"), row(first, "attr-a2", "customer-42", "beta")
    a3 = row(first, "attr-a3", "'=HYPERLINK(\"http://x\")", "")  # a formula is made text
    b1 = row(second, "attr-b1", "customer-7", "support")
    stamp = f"{start:%Y%m%dT%H%M%S}Z_{start + timedelta(days=2):%Y%m%dT%H%M%S}Z"

    mine = first.get("/v1/usage.csv", params=window)
    assert mine.status_code == 200, mine.text
    assert mine.headers["content-type"] == "text/csv; charset=utf-8"
    assert mine.headers["content-disposition"] == (
        f'attachment; filename="usage_{first.org_id}_{first.user_id}_{stamp}.csv"')
    assert list(csv.reader(io.StringIO(mine.text))) == [HEADER, a1, a2, a3]
    assert mine.text.endswith('\r\n') and '"\'=HYPERLINK(""http://x"")"' in mine.text
    theirs = second.get("/api/v1/llm/usage.csv", params=window)
    assert list(csv.reader(io.StringIO(theirs.text))) == [HEADER, b1]
    tagged = first.get("/v1/usage.csv", params={**window, "tag": "beta"})
    assert list(csv.reader(io.StringIO(tagged.text))) == [HEADER, a1, a2]

    with httpx.Client(base_url=gateway.url, headers={
            "authorization": f"Bearer {gateway.env['CREDITGATE_ADMIN_TOKEN']}"}) as admin:
        org = admin.get(f"/admin/orgs/{first.org_id}/usage.csv", params=window)
        assert org.headers["content-disposition"] == f'attachment; filename="usage_{first.org_id}_{stamp}.csv"'
        assert list(csv.reader(io.StringIO(org.text))) == [HEADER, a1, a2, a3, b1]
        support = admin.get(f"/admin/orgs/{first.org_id}/usage.csv",
                            params={**window, "tag": "support", "user_id": second.user_id})
        assert list(csv.reader(io.StringIO(support.text))) == [HEADER, b1]
        long = admin.get(f"/admin/orgs/{first.org_id}/usage.csv", params={
            "start": window["start"], "end": (start + timedelta(days=94)).strftime("%Y-%m-%dT%H:%M:%SZ")})
        assert (long.status_code, long.json()["error"]) == (400, {
            "message": "The period may span at most 93 days.", "type": "invalid_request_error", "param": "end",
            "code": "invalid_value"})
    # a member is not an org admin: the org's download is refused
    refused = first.get(f"/admin/orgs/{first.org_id}/usage.csv", params=window)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_required")


@pytest.mark.parametrize(("extra", "param", "message"), [
    ({"headers": {"X-Tags": "a b"}}, "X-Tags", "Each tag in X-Tags must be 1 to 64 of the characters A-Z a-z 0-9 . _ "
                                               ": - (tags are separated by commas)."),
    ({"headers": {"X-Tags": ",".join(f"t{i}" for i in range(9))}}, "X-Tags", "X-Tags may carry at most 8 tags."),
    ({"headers": {"X-Tags": "x" * 65}}, "X-Tags", "Each tag in X-Tags must be 1 to 64 of the characters A-Z a-z "
                                                  "0-9 . _ : - (tags are separated by commas)."),
    ({"body": {"user": 42}}, "user", "'user' must be a string."),
    ({"body": {"user": "u" * 257}}, "user", "'user' must be at most 256 characters."),
])
def test_bad_attribution_is_400_and_charges_nothing(gateway: Gateway, extra: dict[str, Any], param: str,
                                                     message: str) -> None:
    member = make_member(gateway)
    before = member.get("/v1/credits").json()
    with pytest.raises(openai.BadRequestError) as refused:
        member.client().chat.completions.create(
            model="fake-small", messages=MESSAGES, extra_body=extra.get("body"),
            extra_headers={"X-Request-Id": "attr-bad", **extra.get("headers", {})})
    assert refused.value.status_code == 400
    assert refused.value.body == {"message": message, "type": "invalid_request_error", "param": param,
                                  "code": "invalid_value"}
    assert member.get("/v1/credits").json() == before
    assert member.get("/v1/requests/attr-bad").status_code == 404  # nothing was held
    assert member.get("/v1/usage", params={"group_by": "tag"}).json() == {"data": [], "has_more": False}
