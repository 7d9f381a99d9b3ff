"""The request declarations say exactly what the hand-written getters accepted: trimmed non-blank text
without NUL, amounts in range (inclusive), signed non-zero corrections, ids as proxy/directory/ids.py
reads them, email addresses, and the policy file's vocabularies."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from proxy.api import bodies
from proxy.api.bodies import MAX_AMOUNT
from proxy.api.decode import BodyReader
from proxy.errors import ProxyError
from tests.admin.conftest import POWER_LEVELS, TIERS

READER = BodyReader(tiers=TIERS, power_levels=POWER_LEVELS, providers=["openai"])
GRANT = {"reason": "r", "idempotency_key": "k"}


def accepts(struct: type[bodies.Body], body: dict[str, Any]) -> bool:
    try:
        READER.decode(orjson.dumps(body), struct)
    except ProxyError as exc:
        assert (exc.status, exc.code) == (400, "invalid_value"), exc
        return False
    return True


@pytest.mark.parametrize(("name", "ok"), [
    ("Acme", True), ("  Acme\n", True), ("x" * 200, True), ("é 中", True),
    ("", False), (" ", False), ("\t\n\u0085\u3000", False), ("a\x00b", False), ("x" * 201, False),
])
def test_text_is_non_blank_without_nul_and_at_most_its_length(name: str, ok: bool) -> None:
    assert accepts(bodies.CreateOrg, {"name": name, "tier": "free"}) is ok


def test_a_long_text_is_refused_by_its_length_before_any_pattern_runs() -> None:
    started = time.perf_counter()
    assert not accepts(bodies.CreateUser, {"email": "a@" + "b." * 30_000 + "@"})
    assert time.perf_counter() - started < 0.5  # the email pattern over these 60 kB takes seconds


@pytest.mark.parametrize(("amount", "grant", "adjustment"), [
    (1, True, True), (MAX_AMOUNT, True, True), (-1, False, True), (-MAX_AMOUNT, False, True), (0, False, False),
    (MAX_AMOUNT + 1, False, False), (-MAX_AMOUNT - 1, False, False), (1.0, False, False), (True, False, False),
    ("5", False, False), (None, False, False),
])
def test_amounts(amount: Any, grant: bool, adjustment: bool) -> None:
    assert accepts(bodies.Grant, {**GRANT, "amount_millicredits": amount}) is grant
    assert accepts(bodies.Adjustment, {**GRANT, "amount_millicredits": amount}) is adjustment


@pytest.mark.parametrize(("allocation", "ok"), [(0, True), (None, True), (MAX_AMOUNT, True), (-1, False),
                                                (MAX_AMOUNT + 1, False), (2.5, False), (False, False)])
def test_an_allocation_is_null_or_from_zero(allocation: Any, ok: bool) -> None:
    assert accepts(bodies.PutMember, {"allocation_millicredits": allocation}) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("usr_a", True), ("usr_" + "x" * 64, True), ("usr_A-b_9", True), ("usr_", False), ("usr_" + "x" * 65, False),
    ("usr_a b", False), ("usr_a\n", False), ("usr_é", False), ("org_a", False), (5, False), (None, False),
])
def test_ids_are_read_as_the_directory_reads_them(value: Any, ok: bool) -> None:
    assert accepts(bodies.CreateKey, {"user_id": value}) is ok


@pytest.mark.parametrize(("email", "ok"), [
    ("ann@acme.test", True), (" Ann@Acme.TEST ", True), ("a@b.c", True), ("a@b", False), ("a@@b.c", False),
    ("a b@c.d", False), ("a\x00@b.c", False), ("", False), ("x" * 250 + "@b.cd", False),
])
def test_email_addresses(email: str, ok: bool) -> None:
    assert accepts(bodies.CreateUser, {"email": email}) is ok


def test_vocabularies_are_the_configured_ones_exactly() -> None:
    assert accepts(bodies.CreateOrg, {"name": "A", "tier": "starter"})
    assert not accepts(bodies.CreateOrg, {"name": "A", "tier": "Starter"})
    assert accepts(bodies.PutMember, {"power_level": None})
    assert not accepts(bodies.PutMember, {"power_level": ""})
    other = BodyReader(tiers=["gold"], power_levels=[], providers=[])
    assert other.decode(b'{"name": "A", "tier": "gold"}', bodies.CreateOrg).tier == "gold"
