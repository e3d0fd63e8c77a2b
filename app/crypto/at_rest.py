"""Encryption of stored secrets (corp secret, token, EncodingAESKey) with AES-256-GCM.

A sealed value is `v1:` + base64(nonce ‖ ciphertext ‖ tag). The purpose string (e.g.
`app.secret`) is authenticated as associated data, so a ciphertext copied from one column
into another does not open.
"""

import base64
import binascii
import os

from Crypto.Cipher import AES

_VERSION = "v1:"
KEY_BYTES = 32


class SecretBoxError(Exception):
    """A sealed value does not open with this key: wrong key, wrong purpose or tampering."""


def generate_key() -> str:
    """A new key in the form WECOM_HUB_SECRET_KEY expects (URL-safe Base64 of 32 bytes)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretBoxError(
            "the secret key must be URL-safe Base64 of 32 random bytes "
            "(make one with `wecom-hub secret-key`)"
        )
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretBoxError("the secret key must be 32 bytes")
        self._key = key

    def seal(self, plaintext: str, *, purpose: str) -> str:
        nonce = os.urandom(12)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(purpose.encode())
        ciphertext, tag = cipher.encrypt_and_digest(plaintext.encode())
        return _VERSION + base64.b64encode(nonce + ciphertext + tag).decode()

    def open(self, sealed: str, *, purpose: str) -> str:
        if not sealed.startswith(_VERSION):
            raise SecretBoxError("unknown sealed-value format")
        try:
            blob = base64.b64decode(sealed[len(_VERSION) :], validate=True)
            cipher = AES.new(self._key, AES.MODE_GCM, nonce=blob[:12])
            cipher.update(purpose.encode())
            return cipher.decrypt_and_verify(blob[12:-16], blob[-16:]).decode()
        except (binascii.Error, ValueError) as exc:
            raise SecretBoxError(f"sealed value does not open ({purpose}): wrong key?") from exc
