"""BYOK keys sealed with Fernet: rotation, and masking that shows the last four characters only."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from proxy.config.settings import Secret
from proxy.directory.crypto import KeyBox, UndecryptableKey, last4, mask


def test_byok_keys_survive_rotation() -> None:
    old, new = Secret(Fernet.generate_key().decode()), Secret(Fernet.generate_key().decode())
    stored = KeyBox([old]).encrypt(Secret("sk-provider-1234567890"))
    rotated_box = KeyBox([new, old])
    assert rotated_box.decrypt(stored).reveal() == "sk-provider-1234567890"
    rewrapped = rotated_box.rotate(stored)
    assert KeyBox([new]).decrypt(rewrapped).reveal() == "sk-provider-1234567890"
    with pytest.raises(UndecryptableKey):
        KeyBox([new]).decrypt(stored)


def test_masking_shows_the_last_four_only() -> None:
    assert mask(Secret("sk-provider-1234567890")) == "****7890"
    assert last4(Secret("short")) == ""
    box = KeyBox([Secret(Fernet.generate_key().decode())])
    assert repr(box.decrypt(box.encrypt(Secret("sk-provider-1234567890")))) == "Secret('**********')"
