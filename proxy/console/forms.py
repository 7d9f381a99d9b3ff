"""Reading the console's form posts: bounded, strict, and refused unless they come from our own pages.

A post must come from this origin (Fetch Metadata, Origin or Referer say so, see `same_origin`; a post
with none of them is refused) and, once signed in, carry the session's CSRF token. The body is
application/x-www-form-urlencoded, at most `MAX_FORM_BYTES`, UTF-8, each field once and free of control
characters; anything else is a 4xx page, never a 500.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request

from proxy.api.jsonapi import read_bytes, reject_control
from proxy.errors import ProxyError

MAX_FORM_BYTES = 16 * 1024
MAX_FIELDS = 40
MAX_VALUE = 1024


def forbidden_origin() -> ProxyError:
    return ProxyError.permission("cross_origin", "This form was not sent from this console.")


def same_origin(request: Request) -> bool:
    """The post came from a page of this origin. A browser's Fetch Metadata (`Sec-Fetch-Site`) other than
    same-origin refuses it; then an Origin header must name the host the request was sent to (the Host
    header; the scheme is not compared: behind a proxy that ends TLS the gateway sees http where the
    browser says https).
    Our pages send `Referrer-Policy: no-referrer`, under which Chromium posts forms with `Origin: null`:
    such a post passes only with `Sec-Fetch-Site: same-origin`. Without either header the Referer must
    match; with none of the three it is refused."""
    host = request.headers.get("host", "")
    if not host:
        return False
    mine = host.lower()
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        return _host_of(origin) == mine
    if site == "same-origin":
        return True
    if origin == "null":
        return False
    referer = request.headers.get("referer")
    if referer is None:
        return False
    return _host_of(referer) == mine


def _host_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[::1" (an unclosed IPv6 literal)
        return None
    return parts.netloc.lower() if parts.scheme in ("http", "https") and parts.netloc else None


async def read_form(request: Request) -> dict[str, str]:
    if not same_origin(request):
        raise forbidden_origin()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise ProxyError(415, "invalid_request_error", "unsupported_media_type",
                         "Send the form as application/x-www-form-urlencoded.")
    raw = await read_bytes(request, MAX_FORM_BYTES)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=MAX_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ProxyError.invalid_value(None, "The form is not valid.") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        reject_control(name, "form")
        reject_control(value, name[:64])
        if name in form:
            raise ProxyError.invalid_value(name[:64], f"'{name[:64]}' was sent twice.")
        if len(value) > MAX_VALUE:
            raise ProxyError.invalid_value(name[:64], f"'{name[:64]}' is too long.")
        form[name] = value
    return form


def text(form: dict[str, str], name: str, *, required: bool = True, limit: int = 200) -> str | None:
    """A trimmed text field; empty is absent (400 naming it when required)."""
    value = form.get(name, "").strip()
    if not value:
        if required:
            raise ProxyError.missing_field(name)
        return None
    if len(value) > limit:
        raise ProxyError.invalid_value(name, f"'{name}' is longer than {limit} characters.")
    return value
