"""Verify and decrypt one callback (PROTOCOL.md §1.2, §1.3, §2.7). Pure: no I/O, clock injected.

Order matters: the signature is checked before the timestamp and before any decryption, so
unauthenticated input never reaches AES or the inner XML parser.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from app.callbacks import safexml
from app.callbacks.errors import CallbackRejected, from_crypto, missing_parameter
from app.crypto import WXBizMsgCrypt, WXBizMsgCryptError


@dataclass(frozen=True, slots=True)
class CallbackQuery:
    signature: str
    timestamp: str
    nonce: str
    echostr: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, str], *, url_verification: bool) -> "CallbackQuery":
        """params must be URL-decoded exactly once (Starlette's query_params are); a second
        decoding turns '+' in echostr into ' ' and the signature fails."""
        names = ["msg_signature", "timestamp", "nonce"] + (["echostr"] if url_verification else [])
        missing = [name for name in names if not params.get(name)]
        if missing:
            raise missing_parameter(missing)
        return cls(
            signature=params["msg_signature"],
            timestamp=params["timestamp"],
            nonce=params["nonce"],
            echostr=params.get("echostr", ""),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified, decrypted callback."""

    xml: str
    fields: dict[str, safexml.XmlValue]


def check_timestamp(timestamp: str, *, now: float, window: int) -> None:
    """Replay guard. WeCom's retries reuse the original query, so the window must stay
    generous (default 600 s); window 0 turns the check off."""
    # Unix seconds have 10 digits until the year 2286; thousands of digits would cost int()
    # its conversion limit (ValueError) or the subtraction below an OverflowError: a 500.
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise CallbackRejected(400, "bad_timestamp", "timestamp is not Unix seconds")
    if window == 0:
        return
    skew = int(timestamp) - now
    if skew < -window:
        raise CallbackRejected(403, "stale_timestamp", f"timestamp is {int(-skew)} s old")
    if skew > window:
        raise CallbackRejected(403, "future_timestamp", f"timestamp is {int(skew)} s ahead")


def verify_url(crypt: WXBizMsgCrypt, query: CallbackQuery, *, now: float, window: int) -> str:
    """The decrypted echostr to answer a URL verification with."""
    try:
        crypt.verify_signature(
            signature=query.signature,
            timestamp=query.timestamp,
            nonce=query.nonce,
            encrypted=query.echostr,
        )
        check_timestamp(query.timestamp, now=now, window=window)
        echo = crypt.decrypt(query.echostr)
    except WXBizMsgCryptError as exc:
        raise from_crypto(exc) from None
    try:
        return echo.decode("utf-8")
    except UnicodeDecodeError:
        raise CallbackRejected(400, "invalid_echostr", "echostr is not UTF-8") from None


def open_delivery(
    crypt: WXBizMsgCrypt, query: CallbackQuery, body: bytes, *, now: float, window: int
) -> Delivery:
    """Envelope → signature → timestamp → decrypt → ReceiveId → inner XML."""
    try:
        encrypted = safexml.parse_envelope(body)
    except safexml.XmlRejected as exc:
        code = "forbidden_xml" if exc.kind == "forbidden" else "invalid_xml"
        raise CallbackRejected(400, code, str(exc), wecom_code=-40002) from None
    if not encrypted:
        raise CallbackRejected(400, "missing_encrypt", "envelope has no Encrypt", wecom_code=-40002)

    try:
        crypt.verify_signature(
            signature=query.signature,
            timestamp=query.timestamp,
            nonce=query.nonce,
            encrypted=encrypted,
        )
        check_timestamp(query.timestamp, now=now, window=window)
        plaintext = crypt.decrypt(encrypted)
    except WXBizMsgCryptError as exc:
        raise from_crypto(exc) from None

    try:
        text = plaintext.decode("utf-8")
        fields = safexml.parse(text)
    except UnicodeDecodeError:
        raise CallbackRejected(400, "invalid_inner_xml", "decrypted message is not UTF-8") from None
    except safexml.XmlRejected as exc:
        code = "forbidden_inner_xml" if exc.kind == "forbidden" else "invalid_inner_xml"
        raise CallbackRejected(400, code, f"decrypted message: {exc}") from None
    return Delivery(xml=text, fields=fields)
