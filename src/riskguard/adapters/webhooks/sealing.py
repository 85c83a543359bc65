"""Webhook secrets at rest: sealed with AES-256-GCM under a key derived from the service key.

An HMAC secret cannot be stored as a hash (the dispatcher needs it to sign), so it is stored
encrypted: a copy of the database alone does not let anyone forge deliveries. The key is
HKDF-SHA256 of ``RISKGUARD_SECRET_KEY`` (the one that peppers API keys) with a purpose label, so
the same key never serves two uses. Each sealed value is bound to the subscription and secret
ids it belongs to (GCM associated data): a sealed secret copied into another row does not open.
Changing ``RISKGUARD_SECRET_KEY`` makes stored webhook secrets unreadable — rotate them after.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_PURPOSE = b"riskguard webhook secrets v1"
_VERSION = "v1."
_NONCE_BYTES = 12


class SealedSecretError(ValueError):
    """A sealed value that does not open: another service key, another row, or tampered."""


class SecretBox:
    """Seal and open small secrets under one service key."""

    __slots__ = ("_aead",)

    def __init__(self, service_key: bytes) -> None:
        if not service_key:
            raise ValueError("the service key is empty")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(
            service_key
        )
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> str:
        """``v1.`` + url-safe base64 of nonce, ciphertext and tag, bound to ``context``."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, context.encode())
        return _VERSION + base64.urlsafe_b64encode(sealed).decode("ascii")

    def open(self, sealed: str, context: str) -> bytes:
        if not sealed.startswith(_VERSION):
            raise SealedSecretError("not a sealed secret")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_VERSION) :])
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise SealedSecretError(
                "a stored webhook secret does not open (was RISKGUARD_SECRET_KEY changed?)"
            ) from None
