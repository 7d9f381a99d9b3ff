"""API keys: random, prefixed, stored as their SHA-256 only."""

from __future__ import annotations

import hashlib
import re

from proxy.directory.apikeys import generate_key, hash_key, looks_like_key


def test_keys_are_43_random_url_safe_chars_after_the_prefix_stored_as_sha256() -> None:
    new = generate_key()
    key = new.secret.reveal()
    assert re.fullmatch(r"sk-cg-[A-Za-z0-9_-]{43}", key)
    assert looks_like_key(key) and not looks_like_key(key + "x") and not looks_like_key("sk-" + key[6:])
    assert new.key_hash == hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert new.prefix == key[:10]
    assert key not in repr(new) and key not in str(new.secret)
    assert len({generate_key().key_hash for _ in range(200)}) == 200
