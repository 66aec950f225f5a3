"""Encryption of Temporal payloads (AES-256-GCM), with key ids so keys can rotate.

Everything the SDK puts in workflow history (arguments, results, signals, queries, memos, and
with this converter failure messages too) is encrypted before it leaves the process. The Temporal
server, its database and anyone reading history without the key see only ciphertext.

`ENCRYPTION_KEY` holds one or more comma-separated keys, each `key-id:base64-of-32-bytes`. The
first key encrypts; every listed key decrypts. To rotate, put a new key first and keep the old
ones until no open workflow history needs them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec


class PayloadKeySetting(Protocol):
    """Where the key comes from (xbot.settings.Settings is one). Not the settings class itself: the
    settings import this module to validate `ENCRYPTION_KEY`, and the import runs one way only."""

    @property
    def encryption_key(self) -> SecretStr | None: ...


ENCRYPTED_ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class EncryptionKeyError(ValueError):
    """`ENCRYPTION_KEY` is malformed; the message names the setting in one line."""


class PayloadDecryptionError(ValueError):
    """A payload cannot be decrypted with the configured keys (unknown key id, wrong key, tampering)."""


@dataclass(frozen=True)
class Keyring:
    """The key that encrypts (`active_id`) and every key that may decrypt."""

    active_id: str
    keys: Mapping[str, bytes]


def _decode_key(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.urlsafe_b64decode, base64.standard_b64decode):
        try:
            raw = decode(padded.encode("ascii"))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == KEY_BYTES:
            return raw
    raise EncryptionKeyError(
        f"invalid setting ENCRYPTION_KEY: each key must be base64 of {KEY_BYTES} bytes "
        "(make one with `python -m xbot.crypto.codec`)"
    )


def derived_key_id(key: bytes) -> str:
    """A stable id for a key given without one: a short hash that reveals nothing usable."""
    return "k" + hashlib.sha256(b"xbot-payload-key-id:" + key).hexdigest()[:10]


def parse_keyring(value: str) -> Keyring:
    """Parse `id:base64key[,id:base64key...]`; a bare key gets an id derived from it."""
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        key_id, sep, encoded = entry.rpartition(":")
        key = _decode_key(encoded.strip())
        key_id = key_id.strip() if sep else derived_key_id(key)
        if not _KEY_ID_PATTERN.match(key_id):
            raise EncryptionKeyError(
                "invalid setting ENCRYPTION_KEY: key ids may use letters, digits, '.', '_' and '-' (1-64)"
            )
        if key_id in keys:
            raise EncryptionKeyError(f"invalid setting ENCRYPTION_KEY: key id {key_id!r} is listed twice")
        keys[key_id] = key
        order.append(key_id)
    if not order:
        raise EncryptionKeyError("invalid setting ENCRYPTION_KEY: no key given")
    return Keyring(active_id=order[0], keys=keys)


def generate_encryption_key(key_id: str | None = None) -> str:
    """A fresh `id:key` entry for `ENCRYPTION_KEY` (the id defaults to a random one)."""
    key_id = key_id or f"key-{secrets.token_hex(4)}"
    return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over the whole serialized payload (metadata included), nonce prepended.

    The key id is bound in as associated data, so a payload relabelled with another key id fails
    authentication instead of decrypting to garbage. Payloads that are not encrypted pass through
    decode unchanged, so histories written before encryption was enabled stay readable.
    """

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    @classmethod
    def from_setting(cls, value: str) -> EncryptionCodec:
        return cls(parse_keyring(value))

    @property
    def active_key_id(self) -> str:
        return self._keyring.active_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._keyring.active_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCRYPTED_ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCRYPTED_ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            known = ", ".join(sorted(self._ciphers))
            raise PayloadDecryptionError(
                f"payload was encrypted with key id {key_id!r}, which ENCRYPTION_KEY does not list "
                f"(configured: {known})"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
            decoded = Payload()
            decoded.ParseFromString(plain)
        except (InvalidTag, ValueError, DecodeError):
            # ValueError: a nonce too short (truncated data); DecodeError cannot follow a valid tag.
            raise PayloadDecryptionError(
                f"payload failed authentication with key id {key_id!r}: wrong key for that id, "
                "or the payload was altered"
            ) from None
        return decoded


def configured_encryption_key(settings: PayloadKeySetting) -> str | None:
    """The `ENCRYPTION_KEY` value, or None when payload encryption is off."""
    secret = settings.encryption_key
    return (secret.get_secret_value() or None) if secret is not None else None


def codec_from_settings(settings: PayloadKeySetting) -> EncryptionCodec | None:
    key = configured_encryption_key(settings)
    return EncryptionCodec.from_setting(key) if key else None


def data_converter_with_codec(codec: PayloadCodec | None) -> DataConverter:
    """The pydantic converter, plus the codec; with a codec, failure messages are encrypted too."""
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter(settings: PayloadKeySetting) -> DataConverter:
    """The converter every client and worker uses: encrypting when `ENCRYPTION_KEY` is set."""
    return data_converter_with_codec(codec_from_settings(settings))


if __name__ == "__main__":
    print(generate_encryption_key())
