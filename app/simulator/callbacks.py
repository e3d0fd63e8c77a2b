"""Build callbacks exactly as WeCom's servers send them: encrypted, signed, in the envelope.

Used by tests, the benchmarks and (later) `wecom-hub sim send`.
"""

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

from app.crypto import WXBizMsgCrypt, sign


@dataclass(frozen=True, slots=True)
class SignedCallback:
    params: dict[str, str]
    body: bytes


def build_callback(
    crypt: WXBizMsgCrypt,
    message_xml: str,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
    agent_id: str = "",
) -> SignedCallback:
    """A POST delivery of message_xml to the app whose keys `crypt` holds."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or str(secrets.randbelow(10**10))
    encrypted = crypt.encrypt(message_xml.encode())
    body = (
        f"<xml><ToUserName><![CDATA[{crypt.receive_id.decode()}]]></ToUserName>"
        f"<AgentID><![CDATA[{agent_id}]]></AgentID>"
        f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    )
    signature = sign(token=crypt.token, timestamp=ts, nonce=nonce, encrypted=encrypted)
    return SignedCallback(
        params={"msg_signature": signature, "timestamp": ts, "nonce": nonce}, body=body.encode()
    )


def build_url_verification(
    crypt: WXBizMsgCrypt, echo: str, *, timestamp: int | None = None
) -> dict[str, str]:
    """Query parameters of the GET WeCom sends when an admin saves the callback URL."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = str(secrets.randbelow(10**10))
    echostr = crypt.encrypt(echo.encode())
    signature = sign(token=crypt.token, timestamp=ts, nonce=nonce, encrypted=echostr)
    return {"msg_signature": signature, "timestamp": ts, "nonce": nonce, "echostr": echostr}


def text_message(
    *,
    corp_id: str,
    from_user: str,
    content: str,
    msg_id: str,
    agent_id: str = "1000002",
    create_time: int | None = None,
) -> str:
    created = int(time.time()) if create_time is None else create_time
    return (
        f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName>"
        f"<FromUserName><![CDATA[{escape(from_user)}]]></FromUserName>"
        f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId>"
        f"<AgentID>{agent_id}</AgentID></xml>"
    )


def add_external_contact(
    *,
    corp_id: str,
    user_id: str,
    external_user_id: str,
    state: str = "",
    welcome_code: str = "",
    create_time: int | None = None,
) -> str:
    created = int(time.time()) if create_time is None else create_time
    return (
        f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName>"
        "<FromUserName><![CDATA[sys]]></FromUserName>"
        f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[change_external_contact]]></Event>"
        "<ChangeType><![CDATA[add_external_contact]]></ChangeType>"
        f"<UserID><![CDATA[{user_id}]]></UserID>"
        f"<ExternalUserID><![CDATA[{external_user_id}]]></ExternalUserID>"
        f"<State><![CDATA[{state}]]></State><WelcomeCode><![CDATA[{welcome_code}]]></WelcomeCode>"
        "</xml>"
    )


def event_xml(
    corp_id: str,
    event: str,
    fields: Mapping[str, str | list[str]],
    *,
    create_time: int | None = None,
) -> str:
    """Any event WeCom sends as `sys`: change_external_contact, change_external_chat, …

    A list value becomes <Item> children (MemChangeList)."""
    created = int(time.time()) if create_time is None else create_time
    parts = [
        f"<ToUserName><![CDATA[{corp_id}]]></ToUserName>",
        "<FromUserName><![CDATA[sys]]></FromUserName>",
        f"<CreateTime>{created}</CreateTime>",
        "<MsgType><![CDATA[event]]></MsgType>",
        f"<Event><![CDATA[{event}]]></Event>",
    ]
    for name, value in fields.items():
        if isinstance(value, list):
            items = "".join(f"<Item><![CDATA[{item}]]></Item>" for item in value)
            parts.append(f"<{name}>{items}</{name}>")
        else:
            parts.append(f"<{name}><![CDATA[{value}]]></{name}>")
    return "<xml>" + "".join(parts) + "</xml>"
