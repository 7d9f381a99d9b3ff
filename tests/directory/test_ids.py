"""Prefixed ids: their kind, their order by creation."""

from __future__ import annotations

import re

from proxy.directory.ids import is_id, new_id


def test_new_ids_have_their_prefix_and_sort_by_creation_millisecond() -> None:
    for kind in ("org", "usr", "key", "req"):
        value = new_id(kind)
        assert re.fullmatch(rf"{kind}_[0-9a-hjkmnp-tv-z]{{26}}", value), value
        assert is_id(value, kind)
    ids = [new_id("org") for _ in range(1000)]
    assert len(set(ids)) == 1000
    # the first 10 characters are the millisecond: never decreasing
    assert [i[4:14] for i in ids] == sorted(i[4:14] for i in ids)


def test_is_id_accepts_prefixed_tokens_only() -> None:
    assert is_id("org_demo", "org") and is_id("usr_A-b_9", "usr")
    for bad in ("org_", "usr_x", "org_a b", "org_" + "a" * 65, "org_é", 5, None, "ORG_x"):
        assert not is_id(bad, "org"), bad


def test_unknown_kind_is_refused() -> None:
    try:
        new_id("tok")
    except ValueError as exc:
        assert str(exc) == "unknown id kind 'tok'"
    else:
        raise AssertionError("new_id accepted an unknown kind")
