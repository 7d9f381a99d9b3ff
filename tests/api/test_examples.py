"""Every example in /openapi.json is one its declaration accepts (constraints, Rules and the policy
file's vocabularies included) and one its generated schema validates: a document that shows what the
API would refuse, or never send, fails here."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from openapi_schema_validator import OAS31Validator

from proxy.api import answers
from proxy.api.decode import Body, BodyReader
from proxy.api.examples import EXAMPLES, example
from proxy.api.openapi import ERRORS, declared, openapi_document
from proxy.api.operations import OPERATIONS
from tests.admin.conftest import POWER_LEVELS, TIERS

DOC = openapi_document(tiers=TIERS, power_levels=POWER_LEVELS)
DECLARED = list(dict.fromkeys(body for op in OPERATIONS for body in declared(op)))


def test_every_declared_body_has_an_example_and_every_example_is_used() -> None:
    assert [body for body in DECLARED if example(body) is None] == []
    used = {item_or_self(body) for body in DECLARED} | {answers.Error}
    assert set(EXAMPLES) - used == set()


def item_or_self(body: Any) -> Any:
    """A listing's item (`Listing[Org]` -> `Org`), else the body itself."""
    args = getattr(body, "__args__", None)
    return args[0] if args else body


@pytest.mark.parametrize("body", DECLARED, ids=lambda body: getattr(body, "__name__", repr(body)))
def test_each_example_decodes_through_its_declaration_and_validates_against_its_schema(body: Any) -> None:
    shown = example(body)
    assert shown is not None
    raw = msgspec.json.encode(shown)
    if isinstance(body, type) and issubclass(body, Body):
        decoded: Any = BodyReader(tiers=TIERS, power_levels=POWER_LEVELS, providers=["openai"]).decode(raw, body)
    else:
        decoded = msgspec.json.decode(raw, type=body, strict=True)
    assert msgspec.json.encode(decoded) == raw
    ref = body.__name__ if isinstance(body, type) else f"Listing_{body.__args__[0].__name__}_"
    validator = OAS31Validator({"$ref": f"#/components/schemas/{ref}", "components": DOC["components"]})
    assert list(validator.iter_errors(msgspec.json.decode(raw))) == []


def test_each_error_example_is_an_error_body_of_its_status() -> None:
    error = OAS31Validator({"$ref": "#/components/schemas/Error", "components": DOC["components"]})
    for name, response in DOC["components"]["responses"].items():
        shown = response["content"]["application/json"]["example"]
        assert list(error.iter_errors(shown)) == [], name
        assert msgspec.json.decode(msgspec.json.encode(shown), type=answers.Error, strict=True)
    assert [status for status, (_, example_error) in ERRORS.items() if example_error.status != status] == []
    assert DOC["components"]["responses"]["E413"]["content"]["application/json"]["example"]["error"]["code"] == (
        "body_too_large")


def test_the_document_carries_the_examples() -> None:
    post = DOC["paths"]["/admin/orgs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["example"] == {"name": "Acme", "tier": "starter"}
    assert post["responses"]["201"]["content"]["application/json"]["example"]["created_at"] == "2026-11-02T09:30:00Z"
    listed = DOC["paths"]["/admin/users"]["get"]["responses"]["200"]["content"]["application/json"]["example"]
    assert listed == {"data": [msgspec.to_builtins(EXAMPLES[answers.User])], "has_more": False}
