"""The spool's line format: one settlement or void per JSON line, exact decimals, strict parsing."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest

from proxy.ledger.spool_entry import Entry, ledger_id, parse_lines
from tests.ledger.conftest import usage


def entry(rid: str, charge: int = 42, *, org: str = "org_s") -> Entry:
    return Entry.of(org, rid, usage(charge, prompt=10, completion=5), {"route": "chat/completions"})


def test_an_entry_is_one_json_line_with_every_field_of_its_settlement() -> None:
    e = Entry.of("org_s", "req_1", usage(42, prompt=10, completion=5), {"factor": Decimal("0.35"), "user_id": "u"})
    assert e.line.endswith(b"\n") and e.line.count(b"\n") == 1
    record = orjson.loads(e.line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", record.pop("spooled_at"))
    assert record == {
        "format": 1, "op": "settle", "org_id": "org_s", "request_id": "req_1",
        "settlement": {"prompt_tokens": 10, "completion_tokens": 5, "charge": 42, "list_price": 42,
                       "usage_source": "provider", "model": "fake-small", "provider": "openai",
                       "deployment": "dep-1"},
        "context": {"factor": "0.35", "user_id": "u"},
    }
    back = Entry.parse(e.line)
    assert (back.op, back.org_id, back.request_id, back.settlement, back.line) == (
        "settle", "org_s", "req_1", usage(42, prompt=10, completion=5), e.line)
    void = Entry.parse(Entry.of("org_s", "req_2", None).line)
    assert (void.op, void.settlement, void.key) == ("void", None, ("void", "org_s", "req_2"))


@pytest.mark.parametrize("mutate", [
    lambda r: "not json",
    lambda r: [],
    lambda r: {**r, "format": 2},
    lambda r: {**r, "op": "refund"},
    lambda r: {**r, "org_id": ""},
    lambda r: {k: v for k, v in r.items() if k != "request_id"},
    lambda r: {**r, "settlement": None},
    lambda r: {**r, "settlement": {k: v for k, v in r["settlement"].items() if k != "charge"}},
    lambda r: {**r, "settlement": {**r["settlement"], "charge": "42"}},
    lambda r: {**r, "settlement": {**r["settlement"], "charge": True}},
    lambda r: {**r, "settlement": {**r["settlement"], "model": None}},
])
def test_a_line_that_is_not_an_entry_is_refused(mutate: Callable[[dict[str, Any]], Any]) -> None:
    record = orjson.loads(entry("req_1").line)
    with pytest.raises(ValueError):
        Entry.parse(orjson.dumps(mutate(record)))


def test_parse_lines_skips_blank_and_bad_lines_and_recovers_a_whole_last_line() -> None:
    a, b, c = entry("a").line, entry("b").line, entry("c").line
    entries, bad = parse_lines(a + b"\n" + b"{garbage\n" + b + c.rstrip(b"\n"))
    assert ([e.request_id for e in entries], bad) == (["a", "b", "c"], 1)
    assert entries[2].line == c  # stored again with its newline
    entries, bad = parse_lines(a + b + c[: len(c) // 2])  # a write cut short: never acknowledged
    assert ([e.request_id for e in entries], bad) == (["a", "b"], 1)


def test_ledger_id_names_the_database_never_the_credentials() -> None:
    one = ledger_id("postgresql://app:secret@db.internal:5432/creditgate")
    assert re.fullmatch(r"[0-9a-f]{12}", one)
    assert ledger_id("postgresql://other:pw2@db.internal:5432/creditgate") == one
    assert len({one, ledger_id("postgresql://app:secret@db.internal:5433/creditgate"),
                ledger_id("postgresql://app:secret@db2.internal:5432/creditgate"),
                ledger_id("postgresql://app:secret@db.internal:5432/other")}) == 4
