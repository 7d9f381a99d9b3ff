"""The answer declarations are the contract's shapes: the error body is what every `ProxyError` renders,
a request record and the credits body have exactly the contract's fields, and unset fields stay out of
what is rendered. (tests/admin/test_answers.py holds the real stores' answers to them.)"""

from __future__ import annotations

import inspect

import msgspec
import pytest

from proxy.api import answers
from proxy.api.jsonapi import json_response
from proxy.errors import ProxyError

ERRORS = [ProxyError.invalid_json(), ProxyError.missing_field("tier"), ProxyError.invalid_value("x", "bad"),
          ProxyError.body_too_large(65536), ProxyError.invalid_api_key(), ProxyError.revoked_api_key(),
          ProxyError.permission("not_a_member", "no"), ProxyError.not_found("org_not_found", "no"),
          ProxyError.request_id_in_use("r1"), ProxyError.purchases_disabled(), ProxyError.rate_limited(3),
          ProxyError.upstream_failed(), ProxyError.ledger_unavailable(), ProxyError.upstream_timeout()]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: str(e.code))
def test_every_error_body_is_the_declared_error(error: ProxyError) -> None:
    decoded = msgspec.json.decode(error.to_bytes(), type=answers.Error, strict=True)
    assert msgspec.json.encode(decoded) == error.to_bytes()


def test_the_request_record_and_credits_are_the_contracts_fields() -> None:
    assert answers.RequestRecord.__struct_fields__ == (
        "request_id", "status", "model", "prompt_tokens", "completion_tokens", "held_millicredits",
        "charged_millicredits", "list_price_millicredits", "usage_source", "byok", "price_version")
    assert answers.Credits.__struct_fields__ == ("org_id", "pool", "allocation", "key")
    assert answers.KeyCredit.__struct_fields__ == ("id", "limit", "used", "held", "available", "period", "resets_at")
    assert answers.PoolCredit.__struct_fields__ == ("balance", "held", "available")
    assert answers.Allocation.__struct_fields__ == ("limit", "used", "held", "available", "period", "resets_at")
    assert answers.Listing.__struct_fields__ == ("data", "has_more")


def test_a_key_is_shown_only_where_it_is_created() -> None:
    with_key = [name for name, struct in inspect.getmembers(answers, inspect.isclass)
                if issubclass(struct, msgspec.Struct) and "key" in struct.__struct_fields__]
    assert with_key == ["CreatedApiKey", "Credits"]
    # /v1/credits' `key` is the calling key's spend under its own limit, never a key
    assert answers.Credits.__annotations__["key"].startswith("Annotated[KeyCredit | None")
    assert "api_key" not in answers.ProviderKey.__struct_fields__


def test_unset_fields_are_not_rendered() -> None:
    usage = answers.Usage(day="2026-11-02", requests=1, prompt_tokens=2, completion_tokens=3,
                          charged_millicredits=4, list_price_millicredits=5)
    assert json_response(usage).body == (b'{"day":"2026-11-02","requests":1,"prompt_tokens":2,"completion_tokens":3,'
                                         b'"charged_millicredits":4,"list_price_millicredits":5}')
    assert json_response(answers.ModelList(data=[])).body == b'{"object":"list","data":[]}'
