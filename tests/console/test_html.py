"""Page building: exact credits, escaping, and the headers every page carries."""

from __future__ import annotations

from datetime import UTC, datetime

from proxy.console.html import HEADERS, credits, error_page, esc, frame, link, money, page, redirect, table


def test_credits_are_exact_for_any_integer() -> None:
    assert [credits(v) for v in (0, 1, 999, 1000, 1234567, -1, -1001, 10**21 + 7)] == [
        "0.000", "0.001", "0.999", "1.000", "1,234.567", "-0.001", "-1.001", "1,000,000,000,000,000,000.007"]
    assert credits(None) == "—"
    assert money(1500) == '<td class="num" data-mc="1500">1.500</td>' and money(None) == '<td class="num">—</td>'


def test_everything_from_outside_is_escaped() -> None:
    hostile = '<script>alert("x")</script>&\''
    assert esc(hostile) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;"
    assert "<script>" not in table(["h"], [f"<td>{esc(hostile)}</td>"], name="t")
    assert link("/console/orgs/x", hostile, after='"><b>') == (
        '<a href="/console/orgs/x?after=%22%3E%3Cb%3E">'
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;</a>")
    html = frame(hostile, "", who=hostile, csrf='"><x')
    assert "<script>" not in html and 'value="&quot;&gt;&lt;x"' in html


def test_pages_carry_the_security_headers() -> None:
    response = page("<p>x</p>")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    for name, value in HEADERS.items():
        assert response.headers[name] == value
    assert HEADERS["content-security-policy"].startswith("default-src 'self'; script-src 'none'; style-src 'self';")
    assert (HEADERS["x-frame-options"], HEADERS["referrer-policy"], HEADERS["cache-control"]) == (
        "DENY", "no-referrer", "no-store")
    moved = redirect("/console/login", {"set-cookie": "a=b"})
    assert (moved.status_code, moved.headers["location"], moved.headers["set-cookie"]) == (303, "/console/login", "a=b")
    refused = error_page(403, "No <b>", code="not_a_member")
    assert refused.status_code == 403 and b'data-code="not_a_member">No &lt;b&gt;' in refused.body


def test_empty_tables_and_times() -> None:
    assert table(["a"], [], name="t", empty="None here.") == '<p class="empty" id="t">None here.</p>'
    from proxy.console.html import cell
    assert cell(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "<td>2026-01-02 03:04:05 UTC</td>"
    assert cell(None) == "<td>—</td>"
