"""Pure crypto: the WXBizMsgCrypt callback scheme and encryption of secrets at rest.

Nothing here does I/O or knows about HTTP or the database, so every function can be tested
with bytes and strings alone.
"""

from app.crypto.errors import (
    Base64DecodeError,
    Base64EncodeError,
    ComputeSignatureError,
    DecryptAESError,
    EncryptAESError,
    GenReturnXmlError,
    IllegalAesKeyError,
    IllegalBufferError,
    LengthPrefixError,
    PaddingError,
    ParseXmlError,
    ReceiveIdError,
    SignatureError,
    WXBizMsgCryptError,
)
from app.crypto.wxbizmsgcrypt import WXBizMsgCrypt, decode_aes_key, sign

__all__ = [
    "Base64DecodeError",
    "Base64EncodeError",
    "ComputeSignatureError",
    "DecryptAESError",
    "EncryptAESError",
    "GenReturnXmlError",
    "IllegalAesKeyError",
    "IllegalBufferError",
    "LengthPrefixError",
    "PaddingError",
    "ParseXmlError",
    "ReceiveIdError",
    "SignatureError",
    "WXBizMsgCrypt",
    "WXBizMsgCryptError",
    "decode_aes_key",
    "sign",
]
