"""Name an event and decide when two deliveries are the same occurrence (PROTOCOL.md §1.5).

WeCom's own advice, FromUserName + CreateTime, silently drops real customer-contact events:
their FromUserName is always `sys` and two adds in one second collide (WxJava lost data this
way several times). So messages are keyed by MsgId, which WeCom assigns once per message, and
everything else by a hash of all its fields: a retry carries the same fields, while two
different occurrences differ in at least one (UserID, ExternalUserID, ChatId, Token, …).
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from app.callbacks.safexml import XmlValue


@dataclass(frozen=True, slots=True)
class EventIdentity:
    family: str
    type: str
    msg_id: str | None
    create_time: datetime | None
    dedup_key: str


def _text(fields: dict[str, XmlValue], name: str) -> str:
    value = fields.get(name)
    return value if isinstance(value, str) else ""


def classify(fields: dict[str, XmlValue]) -> tuple[str, str]:
    """`message/text`, `change_external_contact/add_external_contact`, `event/click`, …

    An event with a ChangeType is named by Event/ChangeType; other app events by event/Event;
    third-party command callbacks by info/InfoType. Anything else is `unknown/unknown`:
    stored and listed, never rejected.
    """
    msg_type = _text(fields, "MsgType")
    event = _text(fields, "Event")
    change_type = _text(fields, "ChangeType")
    info_type = _text(fields, "InfoType")
    if msg_type and msg_type != "event":
        family, kind = "message", msg_type
    elif event and change_type:
        family, kind = event, change_type
    elif event:
        family, kind = "event", event
    elif info_type:
        family, kind = "info", info_type
    else:
        family, kind = "unknown", "unknown"
    return family[:64], kind[:64]


def _create_time(fields: dict[str, XmlValue]) -> datetime | None:
    raw = _text(fields, "CreateTime") or _text(fields, "TimeStamp")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        return None
    return datetime.fromtimestamp(int(raw), tz=UTC)


def canonical_json(fields: dict[str, XmlValue]) -> str:
    """The fields as JSON, the same text for the same fields whatever their order: what a
    non-message's dedup key hashes, and (jsonb keeps no key order anyway) the stored payload,
    so a callback is serialized once."""
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def identify(fields: dict[str, XmlValue], canonical: str | None = None) -> EventIdentity:
    """canonical: canonical_json(fields), where the caller has it already."""
    family, kind = classify(fields)
    msg_id = _text(fields, "MsgId") or None
    if msg_id and family == "message":
        # MsgId is opaque: numeric in old clients, Base64-like in new ones.
        dedup_key = "msg:" + msg_id[:120]
    else:
        canonical = canonical_json(fields) if canonical is None else canonical
        dedup_key = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return EventIdentity(
        family=family,
        type=kind,
        msg_id=msg_id[:128] if msg_id else None,
        create_time=_create_time(fields),
        dedup_key=dedup_key,
    )
