"""Prefixed ids and API key generation."""

from __future__ import annotations

import hashlib
import re

from proxy.directory.apikeys import generate_key, hash_key, looks_like_key
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


def test_keys_are_43_random_url_safe_chars_after_the_prefix_stored_as_sha256() -> None:
    new = generate_key()
    key = new.secret.reveal()
    assert re.fullmatch(r"sk-cg-[A-Za-z0-9_-]{43}", key)
    assert looks_like_key(key) and not looks_like_key(key + "x") and not looks_like_key("sk-" + key[6:])
    assert new.key_hash == hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert new.prefix == key[:10]
    assert key not in repr(new) and key not in str(new.secret)
    assert len({generate_key().key_hash for _ in range(200)}) == 200
