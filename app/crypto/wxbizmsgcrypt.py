"""The WXBizMsgCrypt scheme that signs and encrypts every WeCom callback (PROTOCOL.md §2).

    msg_signature = sha1(sorted([token, timestamp, nonce, ciphertext]) joined) in lowercase hex
    plaintext     = random(16) ‖ uint32_be(len(msg)) ‖ msg ‖ ReceiveId
    ciphertext    = base64(AES-256-CBC(key, iv=key[:16], PKCS#7 padded to 32-byte blocks))

Two details sink most hand-written implementations and are handled here on purpose: the
padding block is 32 bytes, so a stock 16-byte PKCS#7 unpadder rejects half the messages; and
the ciphertext is always part of the signature, unlike the Official Account plain mode.
"""

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct

from Crypto.Cipher import AES
from Crypto.Cipher._mode_cbc import CbcMode

from app.crypto.errors import (
    Base64DecodeError,
    DecryptAESError,
    IllegalAesKeyError,
    LengthPrefixError,
    PaddingError,
    ReceiveIdError,
    SignatureError,
)

BLOCK_SIZE = 32
_ENCODING_AES_KEY = re.compile(r"[A-Za-z0-9]{43}")
_REPLY_TEMPLATE = (
    "<xml>\n"
    "<Encrypt><![CDATA[{encrypt}]]></Encrypt>\n"
    "<MsgSignature><![CDATA[{signature}]]></MsgSignature>\n"
    "<TimeStamp>{timestamp}</TimeStamp>\n"
    "<Nonce><![CDATA[{nonce}]]></Nonce>\n"
    "</xml>"
)


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """Turn the 43-character EncodingAESKey into the 32-byte AES key.

    The last character carries two bits that Base64 drops, so two keys that differ only there
    are the same key; we accept both, as WeCom and every SDK do, rather than demand the
    canonical form.
    """
    if not _ENCODING_AES_KEY.fullmatch(encoding_aes_key):
        raise IllegalAesKeyError("EncodingAESKey must be 43 characters from [A-Za-z0-9]")
    return base64.b64decode(encoding_aes_key + "=")


def sign(*, token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    """msg_signature over the four strings exactly as received (timestamp stays a string)."""
    joined = "".join(sorted([token, timestamp, nonce, encrypted]))
    return hashlib.sha1(joined.encode(), usedforsecurity=False).hexdigest()


class WXBizMsgCrypt:
    """One app's callback keys: verifies, decrypts and encrypts its messages."""

    def __init__(self, *, token: str, encoding_aes_key: str, receive_id: str) -> None:
        self.token = token
        self.receive_id = receive_id.encode()
        self._key = decode_aes_key(encoding_aes_key)
        # Decryption reuses one ECB cipher (see decrypt): AES.new is half the cost of
        # decrypting a callback, and an ECB object, unlike a CBC one, keeps no state.
        self._blocks = AES.new(self._key, AES.MODE_ECB)
        self._iv = self._key[:16]

    def verify_signature(
        self, *, signature: str, timestamp: str, nonce: str, encrypted: str
    ) -> None:
        expected = sign(token=self.token, timestamp=timestamp, nonce=nonce, encrypted=encrypted)
        # compare_digest refuses non-ASCII str, so compare bytes: a hostile signature is any text.
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise SignatureError(
                "msg_signature does not match token, timestamp, nonce and ciphertext"
            )

    def verify_url(self, *, signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """URL verification (GET): the echostr plaintext, to be answered as the raw body."""
        self.verify_signature(
            signature=signature, timestamp=timestamp, nonce=nonce, encrypted=echostr
        )
        return self.decrypt(echostr).decode("utf-8", errors="strict")

    def decrypt_message(
        self, *, signature: str, timestamp: str, nonce: str, encrypted: str
    ) -> bytes:
        """Verify, then decrypt: the signature is checked before any AES work is done."""
        self.verify_signature(
            signature=signature, timestamp=timestamp, nonce=nonce, encrypted=encrypted
        )
        return self.decrypt(encrypted)

    def _cipher(self) -> CbcMode:
        return AES.new(self._key, AES.MODE_CBC, iv=self._key[:16])

    def decrypt(self, encrypted: str) -> bytes:
        """The msg part of the plaintext, after checking padding, length prefix and ReceiveId."""
        try:
            ciphertext = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Base64DecodeError(f"ciphertext is not valid Base64: {exc}") from None
        if not ciphertext or len(ciphertext) % AES.block_size:
            raise DecryptAESError(
                f"ciphertext is {len(ciphertext)} bytes, not a positive multiple of 16"
            )
        # CBC decryption, P_i = D(C_i) xor C_(i-1) with C_0 = iv: every block through the
        # shared ECB cipher at once, then one xor with the ciphertext shifted by a block.
        # Equal to AES.new(key, MODE_CBC, iv).decrypt (the published vectors and wechatpy
        # hold it to that, tests/test_crypto_*.py) without building a cipher per callback.
        decrypted = self._blocks.decrypt(ciphertext)
        chained = self._iv + ciphertext[:-16]
        raw = (int.from_bytes(decrypted) ^ int.from_bytes(chained)).to_bytes(len(ciphertext))

        pad = raw[-1]
        if not 1 <= pad <= BLOCK_SIZE or raw[-pad:] != bytes([pad]) * pad:
            raise PaddingError(f"PKCS#7 padding (block 32) is malformed: last byte {pad}")
        body = raw[:-pad]
        if len(body) < 20:
            raise LengthPrefixError("plaintext is shorter than random(16) + length(4)")
        (msg_len,) = struct.unpack(">I", body[16:20])
        if 20 + msg_len > len(body):
            raise LengthPrefixError(
                f"length prefix says {msg_len} bytes but only {len(body) - 20} follow"
            )
        msg, receive_id = body[20 : 20 + msg_len], body[20 + msg_len :]
        if receive_id != self.receive_id:
            shown = receive_id[:64].decode("utf-8", errors="replace")
            raise ReceiveIdError(f"ReceiveId {shown!r} is not this app's corp id")
        return msg

    def encrypt(self, msg: bytes, *, random16: bytes | None = None) -> str:
        """Base64 ciphertext of msg; random16 is injectable so published vectors can be replayed."""
        prefix = os.urandom(16) if random16 is None else random16
        if len(prefix) != 16:
            raise ValueError("random16 must be exactly 16 bytes")
        plain = prefix + struct.pack(">I", len(msg)) + msg + self.receive_id
        pad = BLOCK_SIZE - len(plain) % BLOCK_SIZE
        return base64.b64encode(self._cipher().encrypt(plain + bytes([pad]) * pad)).decode()

    def encrypt_reply(
        self, reply_xml: str, *, timestamp: str, nonce: str, random16: bytes | None = None
    ) -> str:
        """The encrypted passive-reply envelope (§2.8), signed with the same timestamp and nonce."""
        encrypted = self.encrypt(reply_xml.encode(), random16=random16)
        signature = sign(token=self.token, timestamp=timestamp, nonce=nonce, encrypted=encrypted)
        return _REPLY_TEMPLATE.format(
            encrypt=encrypted, signature=signature, timestamp=timestamp, nonce=nonce
        )
