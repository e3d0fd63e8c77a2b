"""Round trips over arbitrary payloads, and each failure mode on its own."""

import base64
import struct

import pytest
from Crypto.Cipher import AES
from hypothesis import given
from hypothesis import strategies as st

from app.crypto import (
    Base64DecodeError,
    DecryptAESError,
    IllegalAesKeyError,
    LengthPrefixError,
    PaddingError,
    ReceiveIdError,
    SignatureError,
    WXBizMsgCrypt,
    WXBizMsgCryptError,
    decode_aes_key,
    sign,
)

KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
CRYPT = WXBizMsgCrypt(token="QDG6eK", encoding_aes_key=KEY, receive_id="ww1234567890")
keys = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    min_size=43,
    max_size=43,
)


@given(payload=st.text(), key=keys, receive_id=st.from_regex(r"ww[0-9a-f]{1,30}", fullmatch=True))
def test_roundtrip_any_utf8_text(payload: str, key: str, receive_id: str) -> None:
    crypt = WXBizMsgCrypt(token="t", encoding_aes_key=key, receive_id=receive_id)
    assert crypt.decrypt(crypt.encrypt(payload.encode())).decode() == payload


@given(payload=st.text(alphabet=st.sampled_from("你好世界客户群欢迎语😀🎉ab<>&"), max_size=500))
def test_roundtrip_chinese_and_emoji_with_every_pad_length(payload: str) -> None:
    encrypted = CRYPT.encrypt(payload.encode())
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert CRYPT.decrypt(encrypted).decode() == payload


@given(payload=st.binary(max_size=2000), timestamp=st.integers(0, 2**33), nonce=st.text(min_size=1))
def test_signed_delivery_roundtrip(payload: bytes, timestamp: int, nonce: str) -> None:
    encrypted = CRYPT.encrypt(payload)
    signature = sign(token=CRYPT.token, timestamp=str(timestamp), nonce=nonce, encrypted=encrypted)
    assert (
        CRYPT.decrypt_message(
            signature=signature, timestamp=str(timestamp), nonce=nonce, encrypted=encrypted
        )
        == payload
    )


def _raw_cipher(plain: bytes) -> str:
    """Encrypt arbitrary (already padded) plaintext, to forge broken buffers."""
    key = decode_aes_key(KEY)
    return base64.b64encode(AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(plain)).decode()


@pytest.mark.parametrize(
    ("encrypted", "error", "code"),
    [
        ("not base64 at all!", Base64DecodeError, -40010),
        ("QUJD", DecryptAESError, -40007),  # 3 bytes: not a multiple of the AES block
        ("", DecryptAESError, -40007),
        (_raw_cipher(b"\x00" * 31 + b"\x00"), PaddingError, -40008),  # pad byte 0
        (_raw_cipher(b"\x00" * 31 + b"\x21"), PaddingError, -40008),  # pad byte 33
        (_raw_cipher(b"\x00" * 29 + b"\x01\x03\x03"), PaddingError, -40008),  # inconsistent
        (
            _raw_cipher(b"r" * 16 + struct.pack(">I", 9999) + b"x" * 11 + b"\x01"),
            LengthPrefixError,
            -40008,
        ),
        (_raw_cipher(b"r" * 10 + b"\x16" * 22), LengthPrefixError, -40008),  # shorter than 20
    ],
)
def test_each_malformed_ciphertext_has_its_own_error(
    encrypted: str, error: type[WXBizMsgCryptError], code: int
) -> None:
    with pytest.raises(error) as raised:
        CRYPT.decrypt(encrypted)
    assert raised.value.code == code


def test_wrong_receive_id_names_what_it_saw() -> None:
    other = WXBizMsgCrypt(token="QDG6eK", encoding_aes_key=KEY, receive_id="wwOTHERCORP")
    with pytest.raises(ReceiveIdError, match="wwOTHERCORP") as raised:
        CRYPT.decrypt(other.encrypt(b"<xml/>"))
    assert raised.value.code == -40005


@pytest.mark.parametrize("signature", ["", "0" * 40, "DEADBEEF", "签名" * 20])
def test_bad_signature(signature: str) -> None:
    encrypted = CRYPT.encrypt(b"<xml/>")
    with pytest.raises(SignatureError) as raised:
        CRYPT.decrypt_message(signature=signature, timestamp="1", nonce="2", encrypted=encrypted)
    assert raised.value.code == -40001


def test_signature_covers_the_ciphertext_not_only_token_timestamp_nonce() -> None:
    encrypted = CRYPT.encrypt(b"<xml/>")
    plain_mode = sign(token=CRYPT.token, timestamp="1", nonce="2", encrypted="")
    with pytest.raises(SignatureError):
        CRYPT.decrypt_message(signature=plain_mode, timestamp="1", nonce="2", encrypted=encrypted)


@pytest.mark.parametrize("key", ["short", "x" * 44, "+" * 43, "é" * 43])
def test_illegal_aes_key(key: str) -> None:
    with pytest.raises(IllegalAesKeyError) as raised:
        decode_aes_key(key)
    assert raised.value.code == -40004


def test_random_prefix_must_be_16_bytes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        CRYPT.encrypt(b"x", random16=b"short")
