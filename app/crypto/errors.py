"""Failures of the WXBizMsgCrypt scheme, one class per official return code.

The codes are those of Tencent's reference library (加解密库下载与返回码, PROTOCOL.md §2.6). They
never travel on the wire; we keep them so that a log line or an API error can be matched
against WeCom's documentation and every SDK's error table.

    WXBizMsgCryptError
     ├── SignatureError           -40001
     ├── ParseXmlError            -40002
     ├── ComputeSignatureError    -40003
     ├── IllegalAesKeyError       -40004
     ├── ReceiveIdError           -40005
     ├── EncryptAESError          -40006
     ├── DecryptAESError          -40007
     ├── IllegalBufferError       -40008
     │    ├── PaddingError
     │    └── LengthPrefixError
     ├── Base64EncodeError        -40009
     ├── Base64DecodeError        -40010
     └── GenReturnXmlError        -40011
"""

from typing import ClassVar


class WXBizMsgCryptError(Exception):
    """Base class; `code` is the official return code, `reason` a short machine-readable name."""

    code: ClassVar[int] = 0
    reason: ClassVar[str] = "crypto_error"


class SignatureError(WXBizMsgCryptError):
    code = -40001
    reason = "bad_signature"


class ParseXmlError(WXBizMsgCryptError):
    code = -40002
    reason = "invalid_xml"


class ComputeSignatureError(WXBizMsgCryptError):
    code = -40003
    reason = "compute_signature_failed"


class IllegalAesKeyError(WXBizMsgCryptError):
    code = -40004
    reason = "illegal_aes_key"


class ReceiveIdError(WXBizMsgCryptError):
    code = -40005
    reason = "wrong_receive_id"


class EncryptAESError(WXBizMsgCryptError):
    code = -40006
    reason = "encrypt_failed"


class DecryptAESError(WXBizMsgCryptError):
    code = -40007
    reason = "decrypt_failed"


class IllegalBufferError(WXBizMsgCryptError):
    code = -40008
    reason = "illegal_buffer"


class PaddingError(IllegalBufferError):
    """The PKCS#7 padding (block size 32) is not 1..32 bytes all equal to the pad length."""

    reason = "bad_padding"


class LengthPrefixError(IllegalBufferError):
    """The big-endian msg_len runs past the end of the decrypted buffer."""

    reason = "bad_length_prefix"


class Base64EncodeError(WXBizMsgCryptError):
    code = -40009
    reason = "base64_encode_failed"


class Base64DecodeError(WXBizMsgCryptError):
    code = -40010
    reason = "bad_base64"


class GenReturnXmlError(WXBizMsgCryptError):
    code = -40011
    reason = "reply_xml_failed"
