"""Encryption of stored secrets (corp secret, token, EncodingAESKey) with AES-256-GCM.

A sealed value is `v2:<key id>:` + base64(nonce ‖ ciphertext ‖ tag). The key id names the key
that sealed it (derived from the key, so nothing to configure), so that after a rotation each
value opens with the right one of the configured keys and the values still sealed with an
old key can be found (`needs_resealing`). Authenticated as associated data, and so bound to
the value: the format, the key id, the purpose (what the value is, e.g. `app.secret`) and
the owner (whose it is, e.g. the app's id and corp): a ciphertext copied into another
column, or into the same column of another app's row, or relabelled with another key id,
does not open. The owner is not in the value: the opener says whose row it read it from.

Two older formats still open, so that a database sealed before them keeps working until
`wecom-hub secret-key rotate` seals every value again (docs/adr/0011-at-rest-keys.md):
`v1:<key id>:…` (associated data `<key id>:<purpose>`, no owner) and `v1:` + base64(…)
(base64 has no `:`; the purpose alone, with whichever configured key sealed it).
"""

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

from Crypto.Cipher import AES

_VERSION = "v2:"
_V1 = "v1:"
KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16


class SecretBoxError(Exception):
    """A sealed value does not open with this key: wrong key, wrong purpose or owner, or
    tampering."""


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


def sealed_with(sealed: str) -> str | None:
    """The id of the key that sealed a value; None for a value of before key ids."""
    for version in (_VERSION, _V1):
        if sealed.startswith(version):
            sealed_by, _, _ = sealed[len(version) :].rpartition(":")
            return sealed_by or None
    return None


def _associated(key_id: str, purpose: str, owner: str) -> bytes:
    # NUL cannot occur in a purpose or an owner (both are ours, printable), so no two
    # (purpose, owner) pairs give the same bytes.
    return f"{_VERSION}{key_id}\0{purpose}\0{owner}".encode()


class SecretBox:
    """Seals with `key`; opens with it or with any of `previous` (the keys of before a
    rotation, until every value is sealed again with the new one).

    `owner` names the row a value belongs to (e.g. `apps/7/ww…`): the same owner must be
    given to open it. Values whose owner is their column alone (a cache keyed by its own
    content) leave it empty."""

    def __init__(self, key: bytes, *, previous: Sequence[bytes] = ()) -> None:
        keys = [key, *previous]
        if any(len(k) != KEY_BYTES for k in keys):
            raise SecretBoxError("the secret key must be 32 bytes")
        self._keys = {key_id(k): k for k in keys}
        if len(self._keys) != len(keys):
            raise SecretBoxError("a previous secret key is the current one, or given twice")
        self.key_id = key_id(key)

    @property
    def previous_key_ids(self) -> list[str]:
        return [kid for kid in self._keys if kid != self.key_id]

    def seal(self, plaintext: str, *, purpose: str, owner: str = "") -> str:
        nonce = os.urandom(_NONCE_BYTES)
        cipher = AES.new(self._keys[self.key_id], AES.MODE_GCM, nonce=nonce)
        cipher.update(_associated(self.key_id, purpose, owner))
        ciphertext, tag = cipher.encrypt_and_digest(plaintext.encode())
        blob = base64.b64encode(nonce + ciphertext + tag).decode()
        return f"{_VERSION}{self.key_id}:{blob}"

    def needs_resealing(self, sealed: str) -> bool:
        """True unless the value is in the current format, sealed with the current key (and
        so bound to its owner): what `wecom-hub secret-key rotate` seals again."""
        return not sealed.startswith(_VERSION) or sealed_with(sealed) != self.key_id

    def open(self, sealed: str, *, purpose: str, owner: str = "") -> str:
        if sealed.startswith(_VERSION):
            sealed_by, _, blob = sealed[len(_VERSION) :].rpartition(":")
            candidates = [(self._key(sealed_by, purpose), _associated(sealed_by, purpose, owner))]
        elif sealed.startswith(_V1):
            sealed_by, _, blob = sealed[len(_V1) :].rpartition(":")
            if not sealed_by:  # from before key ids: any configured key may have sealed it
                candidates = [(key, purpose.encode()) for key in self._keys.values()]
            else:
                key = self._key(sealed_by, purpose)
                candidates = [(key, f"{sealed_by}:{purpose}".encode())]
        else:
            raise SecretBoxError("unknown sealed-value format")
        for key, associated in candidates:
            try:
                return _decrypt(key, blob, associated)
            except (binascii.Error, ValueError):
                continue
        raise SecretBoxError(
            f"sealed value does not open ({purpose}): wrong key, or not this row's value?"
        )

    def _key(self, sealed_by: str, purpose: str) -> bytes:
        key = self._keys.get(sealed_by)
        if key is None:
            raise SecretBoxError(
                f"sealed value ({purpose}) was sealed with key {sealed_by or '?'}, which is "
                "not configured: give it as a previous secret key"
            )
        return key


def _decrypt(key: bytes, blob: str, associated: bytes) -> str:
    raw = base64.b64decode(blob, validate=True)
    nonce, ciphertext, tag = (
        raw[:_NONCE_BYTES],
        raw[_NONCE_BYTES:-_TAG_BYTES],
        raw[-_TAG_BYTES:],
    )
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(associated)
    return cipher.decrypt_and_verify(ciphertext, tag).decode()
