"""The usage routes' shared parts: attribution filters, the group bound, and the CSV download (cells, CSV
injection, the period's bounds, keyset paging over a fake ledger). Through the real stack:
tests/e2e/test_attribution.py."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.api import usage
from proxy.api.usage import CSV_COLUMNS, attribution_filters, bounded, cell, csv_lines, csv_window, usage_csv
from proxy.errors import ProxyError
from tests.fakes import FakeLedger

T0 = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
HEADER = ",".join(CSV_COLUMNS) + "\r\n"


def record(i: int, **fields: Any) -> dict[str, Any]:
    return {"request_id": f"req-{i:05d}", "recorded_at": T0 + timedelta(seconds=i // 2), "user_id": "usr_a",
            "key_id": "key_a", "end_user": None, "tags": [], "model": "fake-small", "prompt_tokens": 10,
            "completion_tokens": 4, "charged_millicredits": 7, "list_price_millicredits": 3,
            "usage_source": "provider", "byok": False, "price_version": "pv_0123456789abcdef", **fields}


def refusal(call: Any, *args: Any) -> tuple[int, str | None, str | None, str]:
    with pytest.raises(ProxyError) as refused:
        call(*args)
    return refused.value.status, refused.value.code, refused.value.param, refused.value.message


@pytest.mark.parametrize(("value", "expected"), [
    (None, ""), (True, "true"), (False, "false"), (0, "0"), (123456789012, "123456789012"),
    (datetime(2026, 11, 1, 10, 0, tzinfo=UTC), "2026-11-01T10:00:00.000000Z"),
    (datetime(2026, 11, 1, 11, 0, 0, 5, tzinfo=UTC).astimezone(), "2026-11-01T11:00:00.000005Z"),
    ([], ""), (["support", "beta"], "support;beta"),
    ("customer-42", "customer-42"),
    # a spreadsheet would run these as formulas: prefixed with '
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1", "'+1"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"), (["-a", "b"], "'-a;b"),
    ("a=b", "a=b"), ("'quoted", "'quoted"),
])
def test_cells(value: Any, expected: str) -> None:
    assert cell(value) == expected


def test_csv_lines_quote_what_rfc_4180_quotes() -> None:
    rows = [record(1, end_user='Acme, "Inc"', tags=["a", "b"], byok=True, price_version=None)]
    assert csv_lines(rows, header=True).decode() == HEADER + (
        'req-00001,2026-11-01T09:30:00.000000Z,usr_a,key_a,"Acme, ""Inc""",a;b,fake-small,10,4,7,3,provider,true,'
        "\r\n")


def test_the_csv_period_is_required_ordered_and_at_most_93_days() -> None:
    start = "2026-11-01T00:00:00Z"
    assert csv_window({"start": start, "end": "2027-02-02T00:00:00Z"}) == (
        datetime(2026, 11, 1, tzinfo=UTC), datetime(2027, 2, 2, tzinfo=UTC))
    assert refusal(csv_window, {"end": start}) == (400, "missing_field", "start", "Missing required field: 'start'.")
    assert refusal(csv_window, {"start": start}) == (400, "missing_field", "end", "Missing required field: 'end'.")
    assert refusal(csv_window, {"start": start, "end": "2027-02-02T00:00:00.000001Z"}) == (
        400, "invalid_value", "end", "The period may span at most 93 days.")
    assert refusal(csv_window, {"start": start, "end": start}) == (
        400, "invalid_value", "end", "'end' must be after 'start'.")
    assert refusal(csv_window, {"start": "yesterday", "end": start})[:3] == (400, "invalid_value", "start")


def test_attribution_filters() -> None:
    assert attribution_filters({}) == (None, None)
    assert attribution_filters({"end_user": "u" * 256, "tag": "t:" + "x" * 62}) == ("u" * 256, "t:" + "x" * 62)
    tag_message = "'tag' must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -."
    for bad in ("", "a,b", "a b", "x" * 65, "\u00e9"):
        assert refusal(attribution_filters, {"tag": bad}) == (400, "invalid_value", "tag", tag_message)
    for bad in ("", "u" * 257):
        assert refusal(attribution_filters, {"end_user": bad}) == (
            400, "invalid_value", "end_user", "'end_user' must be 1 to 256 characters.")


def test_bounded_keeps_at_most_1000_groups() -> None:
    rows = [{"day": str(i)} for i in range(1001)]
    assert bounded(rows) == (rows[:1000], True)
    assert bounded(rows[:1000]) == (rows[:1000], False)


def app(ledger: FakeLedger) -> Starlette:
    async def download(request: Request) -> Response:
        try:
            return await usage_csv(ledger, "org_a", "usr_a", request.query_params, "org_a_usr_a")
        except ProxyError as exc:
            return exc.to_response()

    return Starlette(routes=[Route("/usage.csv", download)])


async def get(ledger: FakeLedger, **params: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app(ledger))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
        return await http.get("/usage.csv", params=params)


WINDOW = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}


async def test_the_download_pages_through_every_record_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "PAGE_ROWS", 4)
    # ten records, two per second: pages end in the middle of a second, where the keyset's tie-break counts
    ledger = FakeLedger(record_rows=[record(i) for i in reversed(range(10))])
    response = await get(ledger, **WINDOW, end_user="customer-42", tag="beta")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        'attachment; filename="usage_org_a_usr_a_20261101T000000Z_20261201T000000Z.csv"')
    assert response.headers["cache-control"] == "no-store"
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == list(CSV_COLUMNS)
    assert [r[0] for r in rows[1:]] == [f"req-{i:05d}" for i in range(10)]
    assert rows[1] == ["req-00000", "2026-11-01T09:30:00.000000Z", "usr_a", "key_a", "", "", "fake-small", "10", "4",
                       "7", "3", "provider", "false", "pv_0123456789abcdef"]
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    # three pages of at most four: the third (two rows) says there is no more
    assert [c[1][6] for c in ledger.calls] == [None, (T0 + timedelta(seconds=1), "req-00003"),
                                               (T0 + timedelta(seconds=3), "req-00007")]
    assert ledger.calls[0] == ("usage_records", ("org_a", "usr_a", start, end, "customer-42", "beta", None, 4))


async def test_a_full_last_page_asks_once_more_and_writes_nothing_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "PAGE_ROWS", 5)
    ledger = FakeLedger(record_rows=[record(i) for i in range(10)])
    response = await get(ledger, **WINDOW)
    assert response.text.count("\r\n") == 11
    assert len(ledger.calls) == 3


async def test_an_empty_period_is_the_header_only() -> None:
    response = await get(FakeLedger(), **WINDOW)
    assert (response.status_code, response.text) == (200, HEADER)


async def test_bad_input_is_json_before_anything_is_read() -> None:
    ledger = FakeLedger(record_rows=[record(1)])
    for params, param in (({}, "start"), ({**WINDOW, "tag": "a b"}, "tag"),
                          ({**WINDOW, "end": "2027-03-01T00:00:00Z"}, "end")):
        response = await get(ledger, **params)
        assert (response.status_code, response.headers["content-type"], response.json()["error"]["param"]) == (
            400, "application/json", param)
    assert ledger.calls == []
