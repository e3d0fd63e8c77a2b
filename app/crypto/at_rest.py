"""Encryption of stored secrets (corp secret, token, EncodingAESKey) with AES-256-GCM.

A sealed value is `v1:<key id>:` + base64(nonce ‖ ciphertext ‖ tag). The key id names the key
that sealed it (derived from the key, so nothing to configure), so that after a rotation each
value opens with the right one of the configured keys and the values still sealed with an
old key can be found. The key id and the purpose string (e.g. `app.secret`) are
authenticated as associated data: a ciphertext copied from one column into another, or
relabelled with another key id, does not open.

Values sealed before key ids existed are `v1:` + base64(…) (base64 has no `:`), with the
purpose alone as associated data; they still open, with whichever configured key sealed them.
"""

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

from Crypto.Cipher import AES

_VERSION = "v1:"
KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16


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


def key_id(key: bytes) -> str:
    """A short public name for a key: a keyed hash, which tells nothing about the key."""
    return hmac.new(key, b"wecom-hub at-rest key id", hashlib.sha256).hexdigest()[:8]


class SecretBox:
    """Seals with `key`; opens with it or with any of `previous` (the keys of before a
    rotation, until every value is sealed again with the new one)."""

    def __init__(self, key: bytes, *, previous: Sequence[bytes] = ()) -> None:
        keys = [key, *previous]
        if any(len(k) != KEY_BYTES for k in keys):
            raise SecretBoxError("the secret key must be 32 bytes")
        self._keys = {key_id(k): k for k in keys}
        if len(self._keys) != len(keys):
            raise SecretBoxError("a previous secret key is the current one, or given twice")
        self.key_id = key_id(key)

    def seal(self, plaintext: str, *, purpose: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        cipher = AES.new(self._keys[self.key_id], AES.MODE_GCM, nonce=nonce)
        cipher.update(f"{self.key_id}:{purpose}".encode())
        ciphertext, tag = cipher.encrypt_and_digest(plaintext.encode())
        blob = base64.b64encode(nonce + ciphertext + tag).decode()
        return f"{_VERSION}{self.key_id}:{blob}"

    def open(self, sealed: str, *, purpose: str) -> str:
        if not sealed.startswith(_VERSION):
            raise SecretBoxError("unknown sealed-value format")
        sealed_by, _, blob = sealed[len(_VERSION) :].rpartition(":")
        if not sealed_by:  # from before key ids: any configured key may have sealed it
            candidates = [(key, purpose) for key in self._keys.values()]
        elif sealed_by in self._keys:
            candidates = [(self._keys[sealed_by], f"{sealed_by}:{purpose}")]
        else:
            raise SecretBoxError(
                f"sealed value ({purpose}) was sealed with key {sealed_by}, which is not "
                "configured: give it as a previous secret key"
            )
        for key, associated in candidates:
            try:
                return _decrypt(key, blob, associated)
            except (binascii.Error, ValueError):
                continue
        raise SecretBoxError(f"sealed value does not open ({purpose}): wrong key?")


def _decrypt(key: bytes, blob: str, associated: str) -> str:
    raw = base64.b64decode(blob, validate=True)
    nonce, ciphertext, tag = (
        raw[:_NONCE_BYTES],
        raw[_NONCE_BYTES:-_TAG_BYTES],
        raw[-_TAG_BYTES:],
    )
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(associated.encode())
    return cipher.decrypt_and_verify(ciphertext, tag).decode()
