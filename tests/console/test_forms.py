"""Form posts: from this origin only, bounded, strict; refusals are the contract's 4xx."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from proxy.console.forms import MAX_FORM_BYTES, read_form, same_origin, text
from proxy.errors import ProxyError


def request(headers: dict[str, str], body: bytes = b"", scheme: str = "http") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "gw.test", **headers}.items()]
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "scheme": scheme, "path": "/console/login", "headers": raw,
             "query_string": b"", "server": ("gw.test", 80)}
    return Request(scope, receive)


@pytest.mark.parametrize(("headers", "ok"), [
    ({"origin": "http://gw.test"}, True),
    ({"origin": "HTTP://GW.TEST"}, True),
    ({"origin": "https://gw.test"}, True),  # TLS ended by a proxy in front: the host decides
    ({"origin": "ftp://gw.test"}, False),
    ({"origin": "http://gw.test:8080"}, False),
    ({"origin": "http://user@gw.test"}, False),
    ({"origin": "http://evil.test"}, False),
    ({"origin": "http://gw.test.evil.test"}, False),
    ({"origin": "null", "sec-fetch-site": "same-origin"}, True),  # Chromium under Referrer-Policy: no-referrer
    ({"origin": "null"}, False),
    ({"origin": "null", "referer": "http://gw.test/console"}, False),
    ({"sec-fetch-site": "cross-site", "origin": "http://gw.test"}, False),
    ({"sec-fetch-site": "same-site", "origin": "http://gw.test"}, False),
    ({"sec-fetch-site": "none"}, False),
    ({"sec-fetch-site": "same-origin", "origin": "http://evil.test"}, False),
    ({"referer": "http://gw.test/console/onboard"}, True),
    ({"referer": "http://evil.test/console"}, False),
    ({"referer": "garbage"}, False),
    ({"referer": "http://[::1"}, False),
    ({"origin": "http://[::1"}, False),
    ({}, False),
])
def test_same_origin(headers: dict[str, str], ok: bool) -> None:
    assert same_origin(request(headers)) is ok


def test_the_host_header_decides() -> None:
    assert same_origin(request({"origin": "https://gw.test:8443", "host": "gw.test:8443"}, scheme="https"))
    assert not same_origin(request({"origin": "https://gw.test", "host": "gw.test:8443"}, scheme="https"))
    assert not same_origin(request({"origin": "http://gw.test", "host": ""}))


FORM = {"origin": "http://gw.test", "content-type": "application/x-www-form-urlencoded"}


async def refusal(headers: dict[str, str], body: bytes) -> tuple[int, str | None, str | None]:
    with pytest.raises(ProxyError) as caught:
        await read_form(request(headers, body))
    return caught.value.status, caught.value.code, caught.value.param


async def test_read_form_reads_fields_once() -> None:
    assert await read_form(request(FORM, b"a=1&b=%E2%82%AC+x&c=")) == {"a": "1", "b": "€ x", "c": ""}
    assert await read_form(request({**FORM, "content-type": "application/x-www-form-urlencoded; charset=utf-8"},
                                   b"a=1")) == {"a": "1"}


async def test_read_form_refusals() -> None:
    assert await refusal({"origin": "http://evil.test", "content-type": FORM["content-type"]}, b"a=1") == (
        403, "cross_origin", None)
    assert await refusal({"origin": "http://gw.test"}, b"a=1") == (415, "unsupported_media_type", None)
    multipart = {**FORM, "content-type": "multipart/form-data"}
    assert await refusal(multipart, b"a=1") == (415, "unsupported_media_type", None)
    assert await refusal(FORM, b"a=" + b"x" * MAX_FORM_BYTES) == (413, "body_too_large", None)
    assert await refusal({**FORM, "content-length": str(MAX_FORM_BYTES + 1)}, b"") == (413, "body_too_large", None)
    assert await refusal(FORM, b"a=%FF") == (400, "invalid_value", None)
    assert await refusal(FORM, b"a=1&a=2") == (400, "invalid_value", "a")
    assert await refusal(FORM, b"a=%00") == (400, "invalid_value", "a")
    assert await refusal(FORM, b"a%0A=1") == (400, "invalid_value", "form")
    assert await refusal(FORM, b"a=" + b"x" * 1025) == (400, "invalid_value", "a")
    assert await refusal(FORM, b"&".join(b"f%d=1" % i for i in range(41))) == (400, "invalid_value", None)


def test_text_fields() -> None:
    assert text({"a": "  x "}, "a") == "x"
    assert text({"a": " "}, "a", required=False) is None
    with pytest.raises(ProxyError) as caught:
        text({}, "a")
    assert (caught.value.code, caught.value.param) == ("missing_field", "a")
    with pytest.raises(ProxyError) as caught:
        text({"a": "xyz"}, "a", limit=2)
    assert (caught.value.code, caught.value.param) == ("invalid_value", "a")
