"""Attribution beyond the member: the OpenAI `user` field and the `X-Tags` header (CONTRACT.md, Attribution).

Both are recorded on the hold and copied onto the usage record, so usage can be grouped and filtered by
them (`group_by=end_user|tag`, `end_user=`, `tag=`) and they appear in the CSV download.

- `user` (the platform's own end customer): a string of at most `MAX_END_USER_CHARS` characters without
  control characters (PostgreSQL text cannot hold a NUL, and the value ends up in CSV cells and pages);
  anything else is 400 `invalid_value` naming `user`. An empty string is no end user. It stays in the body
  LiteLLM receives: it is on every billed route's OpenAI allowlist (proxy/gateway/params.py).
- `X-Tags`: comma-separated tags, each a safe token (the request id's characters, proxy/ops/logs.py) of at
  most `MAX_TAG_CHARS`, at most `MAX_TAGS` distinct ones. Spaces and tabs around a tag are trimmed and empty
  elements ignored (RFC 9110 5.6.1 list syntax); tags are case-sensitive; a tag sent twice counts once (the
  first position is kept). The header sent several times is one list, as HTTP combines it. Anything else is
  400 `invalid_value` with `param` "X-Tags", before anything is held.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.errors import ProxyError
from proxy.ops.logs import SAFE_CHARS

MAX_TAGS = 8
MAX_TAG_CHARS = 64
MAX_END_USER_CHARS = 256
TAGS_HEADER = "X-Tags"
TAG = re.compile(f"[{SAFE_CHARS}]{{1,{MAX_TAG_CHARS}}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_OWS = " \t"  # HTTP's optional whitespace around list elements


def parse_tags(values: Iterable[str]) -> tuple[str, ...]:
    """The distinct tags of every `X-Tags` value, in the order first seen; 400 on a bad one or too many."""
    tags: dict[str, None] = {}
    for value in values:
        for element in value.split(","):
            tag = element.strip(_OWS)
            if not tag:
                continue
            if not TAG.fullmatch(tag):
                raise ProxyError.invalid_value(
                    TAGS_HEADER, f"Each tag in {TAGS_HEADER} must be 1 to {MAX_TAG_CHARS} of the characters "
                    "A-Z a-z 0-9 . _ : - (tags are separated by commas).")
            tags[tag] = None
            if len(tags) > MAX_TAGS:
                raise ProxyError.invalid_value(TAGS_HEADER, f"{TAGS_HEADER} may carry at most {MAX_TAGS} tags.")
    return tuple(tags)


def end_user(body: Mapping[str, Any]) -> str | None:
    """The body's `user`, the platform's own customer; None when absent, null or empty."""
    value = body.get("user")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProxyError.invalid_value("user", "'user' must be a string.")
    if len(value) > MAX_END_USER_CHARS:
        raise ProxyError.invalid_value("user", f"'user' must be at most {MAX_END_USER_CHARS} characters.")
    if _CONTROL.search(value):
        raise ProxyError.invalid_value("user", "'user' must not contain control characters.")
    return value


def attribution(raw_headers: Iterable[tuple[bytes, bytes]], body: Mapping[str, Any]) -> tuple[str | None,
                                                                                              tuple[str, ...]]:
    """(end user, tags) of a billed request from its raw ASGI headers and parsed body."""
    values = [v.decode("latin-1") for k, v in raw_headers if k.lower() == b"x-tags"]
    return end_user(body), parse_tags(values)
