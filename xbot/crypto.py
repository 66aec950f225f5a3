"""Encryption at rest for OAuth tokens (Fernet: AES-128-CBC with HMAC-SHA256)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from xbot.settings import Settings


class TokenCipherError(RuntimeError):
    pass


class TokenCipher:
    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode())
        except (ValueError, TypeError):
            raise TokenCipherError(
                "invalid setting TOKEN_ENCRYPTION_KEY: must be 32 url-safe base64-encoded bytes "
                "(make one with `xbot generate-key`)"
            ) from None

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            raise TokenCipherError("stored token cannot be decrypted with TOKEN_ENCRYPTION_KEY") from None


def generate_key() -> str:
    return Fernet.generate_key().decode()


def cipher_from_settings(settings: Settings) -> TokenCipher:
    """The token cipher; outside development a missing key is refused at start."""
    if settings.token_encryption_key is None:
        raise TokenCipherError("missing setting TOKEN_ENCRYPTION_KEY (make one with `xbot generate-key`)")
    return TokenCipher(settings.token_encryption_key.get_secret_value())
