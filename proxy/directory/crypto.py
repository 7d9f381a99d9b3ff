"""BYOK keys at rest: Fernet with rotation, and masking for display.

`KeyBox(settings.byok_keys)`: the first key encrypts, every key decrypts (`MultiFernet`), so adding a
new key in front of `CREDITGATE_BYOK_KEYS` rotates without making stored keys unreadable. Plaintext
keys travel as `Secret`s; nothing here logs or repr()s them.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from proxy.config.settings import Secret


class UndecryptableKey(Exception):
    """A stored key none of the configured Fernet keys can open (a key was removed from the list)."""


class KeyBox:
    __slots__ = ("_fernet",)

    def __init__(self, keys: Sequence[Secret]) -> None:
        if not keys:
            raise ValueError("at least one Fernet key is required")
        self._fernet = MultiFernet([Fernet(k.reveal().encode()) for k in keys])

    def encrypt(self, plaintext: Secret) -> bytes:
        return self._fernet.encrypt(plaintext.reveal().encode())

    def decrypt(self, ciphertext: bytes) -> Secret:
        try:
            return Secret(self._fernet.decrypt(ciphertext).decode())
        except InvalidToken:
            raise UndecryptableKey("stored provider key cannot be decrypted with CREDITGATE_BYOK_KEYS") from None

    def rotate(self, ciphertext: bytes) -> bytes:
        """Re-encrypt with the first (newest) key."""
        try:
            return self._fernet.rotate(ciphertext)
        except InvalidToken:
            raise UndecryptableKey("stored provider key cannot be decrypted with CREDITGATE_BYOK_KEYS") from None


def last4(key: Secret) -> str:
    """The last four characters (all of a key shorter than 12 stays hidden)."""
    value = key.reveal()
    return value[-4:] if len(value) >= 12 else ""


def mask(key: Secret | str) -> str:
    """A display form showing only the last four characters, e.g. `****abcd`."""
    tail = last4(key) if isinstance(key, Secret) else key[-4:]
    return f"****{tail}"
