"""Encryption at rest for OAuth tokens (Fernet: AES-128-CBC with HMAC-SHA256), with a key ring.

`TOKEN_ENCRYPTION_KEY` holds one or more Fernet keys separated by commas: the first encrypts, every one
decrypts. To rotate: put the new key first everywhere (`NEW,OLD`), run `xbot reencrypt-tokens`, then
drop the old key.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

SETTING = "TOKEN_ENCRYPTION_KEY"


class TokenCipherError(RuntimeError):
    pass


class TokenKeySetting(Protocol):
    """Where the key comes from (xbot.settings.Settings is one). Not the settings class itself: the
    settings import this module to validate `TOKEN_ENCRYPTION_KEY`, and the import runs one way only."""

    @property
    def token_encryption_key(self) -> SecretStr | None: ...


def parse_key_ring(value: str) -> list[Fernet]:
    """The Fernet keys of a `KEY[,KEY...]` setting; errors name the setting and the key's place only."""
    parts = [part.strip() for part in value.split(",")]
    if not any(parts):
        raise TokenCipherError(f"invalid setting {SETTING}: no key given (make one with `xbot generate-key`)")
    keys: list[Fernet] = []
    for number, part in enumerate(parts, start=1):
        where = f"key {number} of {len(parts)}" if len(parts) > 1 else "the key"
        if not part:
            raise TokenCipherError(f"invalid setting {SETTING}: {where} is empty (stray comma?)")
        try:
            keys.append(Fernet(part.encode()))
        except (ValueError, TypeError):
            raise TokenCipherError(
                f"invalid setting {SETTING}: {where} must be 32 url-safe base64-encoded bytes "
                "(make one with `xbot generate-key`)"
            ) from None
    return keys


class TokenCipher:
    def __init__(self, key: str) -> None:
        keys = parse_key_ring(key)
        self._primary = keys[0]
        self._ring = MultiFernet(keys)
        self.key_count = len(keys)

    def __repr__(self) -> str:
        return f"TokenCipher(keys={self.key_count})"

    def encrypt(self, plaintext: str) -> bytes:
        return self._ring.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._ring.decrypt(ciphertext).decode()
        except InvalidToken:
            raise TokenCipherError(f"stored token cannot be decrypted with any key of {SETTING}") from None

    def is_current(self, ciphertext: bytes) -> bool:
        """Whether the first key already encrypts it (nothing to re-encrypt)."""
        try:
            self._primary.decrypt(ciphertext)
        except InvalidToken:
            return False
        return True

    def rotate(self, ciphertext: bytes) -> bytes:
        """The same plaintext under the first key; TokenCipherError when no key reads it."""
        try:
            return self._ring.rotate(ciphertext)
        except InvalidToken:
            raise TokenCipherError(f"stored value cannot be decrypted with any key of {SETTING}") from None


def generate_key() -> str:
    return Fernet.generate_key().decode()


def cipher_from_settings(settings: TokenKeySetting) -> TokenCipher:
    """The token cipher; outside development a missing key is refused at start."""
    if settings.token_encryption_key is None:
        raise TokenCipherError(f"missing setting {SETTING} (make one with `xbot generate-key`)")
    return TokenCipher(settings.token_encryption_key.get_secret_value())
