"""X-Tags and the OpenAI `user` field: what is recorded, and the exact 400 for what is refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.errors import ProxyError
from proxy.gateway.attribution import attribution, end_user, parse_tags
from proxy.gateway.context import RequestContext
from proxy.gateway.params import forwardable
from proxy.gateway.upstream import upstream_body

TAG_CHARS = "Each tag in X-Tags must be 1 to 64 of the characters A-Z a-z 0-9 . _ : - (tags are separated by commas)."


@pytest.mark.parametrize(("values", "tags"), [
    ([], ()),
    ([""], ()),
    (["  "], ()),
    (["support"], ("support",)),
    (["support,beta"], ("support", "beta")),
    ([" support ,\tbeta\t"], ("support", "beta")),  # spaces and tabs around a tag are trimmed
    (["a,,b,"], ("a", "b")),  # empty list elements are ignored (RFC 9110 5.6.1)
    (["b,a,b,A"], ("b", "a", "A")),  # duplicates collapse, first position kept; case-sensitive
    (["team:x.y_z-1"], ("team:x.y_z-1",)),  # every safe character
    (["a,b", "c"], ("a", "b", "c")),  # the header sent twice is one list
    (["t" * 64], ("t" * 64,)),
    ([",".join(f"t{i}" for i in range(8))], tuple(f"t{i}" for i in range(8))),
    ([",".join(["x"] * 20 + [f"t{i}" for i in range(7)])], ("x", *(f"t{i}" for i in range(7)))),
])
def test_tags_are_parsed(values: list[str], tags: tuple[str, ...]) -> None:
    assert parse_tags(values) == tags


@pytest.mark.parametrize(("values", "message"), [
    (["t" * 65], TAG_CHARS),
    (["a b"], TAG_CHARS),  # a space inside a tag
    (["a;b"], TAG_CHARS),
    (["caf\u00e9"], TAG_CHARS),
    (["=cmd"], TAG_CHARS),
    (["a\x00"], TAG_CHARS),
    (['"a"'], TAG_CHARS),
    (["a/b"], TAG_CHARS),
    ([",".join(f"t{i}" for i in range(9))], "X-Tags may carry at most 8 tags."),
    (["t0,t1,t2,t3", "t4,t5,t6,t7,t8"], "X-Tags may carry at most 8 tags."),
])
def test_bad_tags_are_400_naming_the_header(values: list[str], message: str) -> None:
    with pytest.raises(ProxyError) as refused:
        parse_tags(values)
    assert refused.value.body() == {"error": {"message": message, "type": "invalid_request_error",
                                              "param": "X-Tags", "code": "invalid_value"}}
    assert refused.value.status == 400


@pytest.mark.parametrize(("body", "expected"), [
    ({}, None),
    ({"user": None}, None),
    ({"user": ""}, None),
    ({"user": "customer-42"}, "customer-42"),
    ({"user": " spaced name@example.com "}, " spaced name@example.com "),  # recorded as sent
    ({"user": "\u00e9" * 256}, "\u00e9" * 256),  # characters, not bytes
    ({"user": "=1+1"}, "=1+1"),  # recorded as sent: the CSV download makes it safe
])
def test_end_user_is_the_body_user(body: dict[str, Any], expected: str | None) -> None:
    assert end_user(body) == expected


@pytest.mark.parametrize(("value", "message"), [
    (42, "'user' must be a string."),
    (True, "'user' must be a string."),
    (["a"], "'user' must be a string."),
    ({"id": "a"}, "'user' must be a string."),
    ("u" * 257, "'user' must be at most 256 characters."),
    ("a\x00b", "'user' must not contain control characters."),
    ("line\nbreak", "'user' must not contain control characters."),
    ("del\x7f", "'user' must not contain control characters."),
])
def test_a_bad_user_is_400_naming_it(value: Any, message: str) -> None:
    with pytest.raises(ProxyError) as refused:
        end_user({"user": value})
    assert (refused.value.status, refused.value.code, refused.value.param, refused.value.message) == (
        400, "invalid_value", "user", message)


def test_attribution_reads_every_x_tags_header_whatever_its_case() -> None:
    headers = [(b"authorization", b"Bearer k"), (b"x-tags", b"a, b"), (b"X-Tags", b"c"), (b"x-tagsx", b"zz")]
    assert attribution(headers, {"user": "u1"}) == ("u1", ("a", "b", "c"))
    assert attribution([], {}) == (None, ())


@pytest.mark.parametrize("route", ["chat/completions", "completions", "embeddings", "images/generations", "responses"])
def test_user_is_still_what_litellm_receives_and_tags_never_are(route: str) -> None:
    """Recording `user` does not take it out of the body: it stays on every billed route's allowlist; the
    tags are the gateway's own and never cross (no client header reaches LiteLLM)."""
    sent = {"model": "m", "user": "customer-42", **({"input": "hi"} if route == "responses" else {})}
    ctx = RequestContext(request_id="r", route=route, headers={"x-tags": "a"}, body=forwardable(route, sent, ()),
                         model="m", end_user="customer-42", tags=("a",))
    assert orjson.loads(upstream_body(ctx)) == sent
