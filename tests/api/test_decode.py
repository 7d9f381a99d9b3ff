"""The body reader: one msgspec pass, and when it fails the contract's first fault in one fixed order
(not JSON, unknown field, then each field in declaration order), with the declaration's own message;
where orjson reads a body differently from msgspec, the answer is orjson's, as before the declarations."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson
import pytest
from msgspec import UNSET, Meta

from proxy.api import bodies
from proxy.api.decode import Body, BodyReader, Rule, plan_fields
from proxy.errors import ProxyError
from tests.admin.conftest import POWER_LEVELS, TIERS

READER = BodyReader(tiers=TIERS, power_levels=POWER_LEVELS, providers=["openai", "anthropic"])
KEY = "sk-member-own-key-0001"


def refused(struct: type[Body], raw: bytes | dict[str, Any]) -> tuple[str | None, str | None, str]:
    with pytest.raises(ProxyError) as info:
        READER.decode(raw if isinstance(raw, bytes) else orjson.dumps(raw), struct)
    assert (info.value.status, info.value.type) == (400, "invalid_request_error")
    return info.value.code, info.value.param, info.value.message


NOT_JSON, NOT_OBJECT = "The request body is not valid JSON.", "The request body must be a JSON object."


@pytest.mark.parametrize(("raw", "message"), [
    (b"", NOT_JSON), (b"{", NOT_JSON), (b'{"name": "A"} x', NOT_JSON), (b"\xff\xfe", NOT_JSON),
    (b'{"name": "\\ud800"}', NOT_JSON), (b'{"a": 1e999}', NOT_JSON),
    (b'{"name": ' + b"[" * 2000 + b"]" * 2000 + b"}", NOT_JSON),
    (b"[]", NOT_OBJECT), (b"null", NOT_OBJECT), (b'"x"', NOT_OBJECT),
])
def test_what_is_not_a_json_object_is_invalid_json(raw: bytes, message: str) -> None:
    assert refused(bodies.CreateOrg, raw) == ("invalid_json", None, message)


def test_an_unknown_field_comes_first_and_is_named() -> None:
    assert refused(bodies.CreateOrg, {"name": 5, "plan": 1}) == ("invalid_value", "plan", "Unknown field 'plan'.")
    long = "x" * 100
    assert refused(bodies.PatchOrg, {long: 1}) == ("invalid_value", long[:64], f"Unknown field '{long[:64]}'.")
    assert refused(bodies.PutProviderKey, {"provider": "openai", "api_key": KEY, "scop": "org"})[:2] == (
        "invalid_value", "scop")


def test_fields_are_checked_in_declaration_order() -> None:
    assert refused(bodies.CreateOrg, {"tier": 5}) == ("missing_field", "name", "Missing required field: 'name'.")
    assert refused(bodies.CreateOrg, {"name": "A", "tier": "gold"}) == (
        "invalid_value", "tier", "'tier' must be one of: enterprise, free, professional, starter.")
    # a value outside its vocabulary is reported before a later field's wrong type, as the getters did
    assert refused(bodies.PutMember, {"power_level": "turbo", "suspended": 1})[1] == "power_level"
    assert refused(bodies.PutMember, {"role": "owner", "allocation_millicredits": "5"})[1] == "role"
    assert refused(bodies.Adjustment, {"amount_millicredits": 0, "reason": 5})[1] == "amount_millicredits"


def test_messages_come_from_the_declarations() -> None:
    grant = {"reason": "r", "idempotency_key": "k"}
    assert refused(bodies.Grant, {**grant, "amount_millicredits": -5}) == (
        "invalid_value", "amount_millicredits", "'amount_millicredits' must be a positive integer of at most "
                                                "1000000000000000.")
    assert refused(bodies.PutMember, {"power_level": 3})[2] == (
        "'power_level' must be one of: balanced, eco, precision, or null.")
    assert refused(bodies.PutProviderKey, {"provider": 7, "api_key": KEY})[2] == (
        "Unknown provider; expected one of: anthropic, openai.")
    assert refused(bodies.CreateKey, {"user_id": "usr_ok\n"})[1:] == (
        "user_id", "'user_id' must be an id starting with 'usr_'.")  # the pattern alone would let it pass


def test_a_null_required_field_is_missing_only_where_the_declaration_says_so() -> None:
    assert refused(bodies.PutProviderKey, {"provider": None, "api_key": KEY})[:2] == ("missing_field", "provider")
    assert refused(bodies.PutProviderKey, {"provider": "openai", "api_key": KEY, "scope": None})[:2] == (
        "invalid_value", "scope")
    assert refused(bodies.ToggleProviderKey, {"enabled": None})[:2] == ("invalid_value", "enabled")
    assert refused(bodies.CreateOrg, {"name": None, "tier": "free"})[:2] == ("invalid_value", "name")


def test_good_bodies_decode_trimmed_with_unset_fields_unset() -> None:
    org = READER.decode(b'{"name": "  Acme  ", "tier": "free"}', bodies.CreateOrg)
    assert (org.name, org.tier) == ("Acme", "free")
    member = READER.decode(b'{"allocation_millicredits": null, "default": true}', bodies.PutMember)
    assert (member.allocation_millicredits, member.default, member.role, member.power_level) == (None, True, UNSET,
                                                                                                  UNSET)
    key = READER.decode(b'{"provider": "OpenAI", "api_key": " sk-x "}', bodies.PutProviderKey)
    assert (key.provider, key.api_key, key.scope) == ("OpenAI", " sk-x ", "user")  # the route trims and folds


def test_a_key_sent_twice_is_read_as_orjson_reads_it_the_last_value() -> None:
    assert READER.decode(b'{"name": 5, "name": "B", "tier": "free"}', bodies.CreateOrg).name == "B"
    assert refused(bodies.CreateOrg, b'{"name": "B", "name": 5, "tier": "free"}')[:2] == ("invalid_value", "name")
    assert refused(bodies.Grant, b'{"amount_millicredits": 99999999999999999999999, "reason": "r", '
                                 b'"idempotency_key": "k"}')[1] == "amount_millicredits"


def test_the_provider_key_never_shows_in_a_repr() -> None:
    key = READER.decode(orjson.dumps({"provider": "openai", "api_key": KEY}), bodies.PutProviderKey)
    assert KEY not in repr(key) and KEY not in str(key)


def test_a_field_without_exactly_one_rule_or_with_an_unknown_vocabulary_is_a_declaration_bug() -> None:
    class Bare(Body):
        name: str

    class Twice(Body):
        name: Annotated[str, Rule("a"), Rule("b")]

    class Elsewhere(Body):
        name: Annotated[str, Meta(max_length=3), Rule("a", vocabulary="colours")]

    for struct in (Bare, Twice):
        with pytest.raises(TypeError, match="needs exactly one Rule"):
            plan_fields(struct)
    with pytest.raises(TypeError, match="no vocabulary 'colours'"):
        READER.decode(b"{}", Elsewhere)


def test_every_declared_request_field_has_its_rule() -> None:
    for struct in (bodies.CreateOrg, bodies.PatchOrg, bodies.Grant, bodies.Adjustment, bodies.CreateUser,
                   bodies.PutMember, bodies.CreateKey, bodies.PutProviderKey, bodies.ToggleProviderKey):
        assert [f.name for f in plan_fields(struct)] == list(struct.__struct_fields__)
        assert msgspec.structs.fields(struct)  # a struct with no fields would accept only {}
