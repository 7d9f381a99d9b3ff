"""HTML for the console: the page frame, tables, numbers and the security headers every answer carries.

Everything that comes from a store or the request passes `esc` (html.escape, quotes included) before it
is written; the only markup not built here is the charts' SVG (proxy/console/charts.py, which escapes the
same way). Money is shown in credits with three decimals, exactly (integer arithmetic), and each amount
cell carries its millicredits in `data-mc`, the API's number, so a test can compare them one to one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response

# no inline script or style anywhere: the only style sheet is ours, and there is no script at all
POLICY = ("default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; object-src 'none'; "
          "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"content-security-policy": POLICY, "x-frame-options": "DENY", "referrer-policy": "no-referrer",
           "x-content-type-options": "nosniff", "cache-control": "no-store"}


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def credits(millicredits: int | None) -> str:
    """1234567 -> "1,234.567"; exact for any integer (no float)."""
    if millicredits is None:
        return "—"
    sign = "-" if millicredits < 0 else ""
    whole, milli = divmod(abs(int(millicredits)), 1000)
    return f"{sign}{whole:,}.{milli:03d}"


def money(millicredits: int | None) -> str:
    """A table cell of an amount: credits shown, millicredits in data-mc."""
    if millicredits is None:
        return '<td class="num">—</td>'
    return f'<td class="num" data-mc="{int(millicredits)}">{credits(millicredits)}</td>'


def count(value: int | None) -> str:
    return '<td class="num">—</td>' if value is None else f'<td class="num" data-n="{int(value)}">{int(value):,}</td>'


def when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return esc(value)


def cell(value: object) -> str:
    return f"<td>{when(value) if isinstance(value, datetime) else esc(value if value is not None else '—')}</td>"


def link(href: str, text: object, **query: str | None) -> str:
    params = {k: v for k, v in query.items() if v is not None}
    target = href + ("?" + urlencode(params) if params else "")
    return f'<a href="{esc(target)}">{esc(text)}</a>'


def table(headings: Sequence[str], rows: Iterable[str], *, name: str, empty: str = "Nothing yet.") -> str:
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    if not body:
        return f'<p class="empty" id="{esc(name)}">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headings)
    return f'<table id="{esc(name)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def facts(pairs: Sequence[tuple[str, str]], *, name: str) -> str:
    """A definition list; values are markup the caller built (already escaped)."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="facts" id="{esc(name)}">{items}</dl>'


def amount(millicredits: int | None, name: str) -> str:
    if millicredits is None:
        return "—"
    return f'<span class="num" id="{esc(name)}" data-mc="{int(millicredits)}">{credits(millicredits)}</span>'


def frame(title: str, body: str, *, who: str | None = None, csrf: str | None = None,
          nav: Sequence[tuple[str, str]] = ()) -> str:
    """A whole page. `who` and `csrf` (the signed-in caller) add the header's sign-out form."""
    links = "".join(f'<a href="{esc(href)}">{esc(text)}</a>' for href, text in nav)
    account = ""
    if who is not None and csrf is not None:
        account = (f'<form method="post" action="/console/logout" class="logout"><span>{esc(who)}</span>'
                   f'<input type="hidden" name="csrf" value="{esc(csrf)}"><button type="submit">Sign out</button>'
                   "</form>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)} · creditgate</title><link rel=\"stylesheet\" href=\"/console/static/console.css\">"
            f"</head><body><header><a class=\"brand\" href=\"/console\">creditgate</a><nav>{links}</nav>{account}"
            f"</header><main><h1>{esc(title)}</h1>{body}</main></body></html>")


def page(content: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content, status, headers={**HEADERS, **(headers or {})}, media_type="text/html; charset=utf-8")


def error_page(status: int, message: str, *, code: str | None = None, who: str | None = None,
               csrf: str | None = None) -> Response:
    """A refusal as a page (with the header's sign-out form when someone is signed in)."""
    body = f'<p class="error" id="error" data-code="{esc(code)}">{esc(message)}</p><p><a href="/console">Back</a></p>'
    return page(frame(f"{status}: {_REASONS.get(status, 'Error')}", body, who=who, csrf=csrf), status)


def redirect(location: str, headers: dict[str, str] | None = None) -> Response:
    """303 See Other to a path of ours (never one built from the client's input)."""
    return Response(b"", 303, headers={**HEADERS, "location": location, **(headers or {})})


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'


def field(label: str, name: str, *, kind: str = "text", value: Any = "", required: bool = False,
          extra: str = "") -> str:
    need = " required" if required else ""
    return (f'<label>{esc(label)} <input type="{esc(kind)}" name="{esc(name)}" id="f-{esc(name)}" '
            f'value="{esc(value)}"{need}{extra}></label>')


def choice(label: str, name: str, options: Sequence[str], selected: str | None = None) -> str:
    opts = "".join(f'<option value="{esc(o)}"{" selected" if o == selected else ""}>{esc(o)}</option>'
                   for o in options)
    return f'<label>{esc(label)} <select name="{esc(name)}" id="f-{esc(name)}">{opts}</select></label>'


_REASONS = {400: "Bad request", 401: "Not signed in", 403: "Forbidden", 404: "Not found", 409: "Conflict",
            413: "Too large", 415: "Unsupported form", 503: "Unavailable"}
