"""Write to a 微信客服 customer (kf/send_msg) on request, within WeCom's limits: 48 hours
after the customer's last message, and at most 5 messages per customer message (PROTOCOL.md
§5.7). WeCom accepts a send outside them and then does not deliver it, so it is refused
here at once (409), and checked again when the action runs (`skipped`, saying which)."""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import Enqueued, enqueue
from app.actions.kinds import ActionKind
from app.automations.kf import REPLIES_PER_MESSAGE, SESSION_WINDOW
from app.errors import Conflict, ErrorCode
from app.models import KfWindow
from app.operations.common import api_action_key
from app.wecom_apps import app_by_slug


@dataclass(frozen=True, slots=True)
class KfText:
    app: str
    open_kfid: str
    external_userid: str
    text: str


async def send_kf_text(session: AsyncSession, message: KfText, *, by: str) -> Enqueued:
    app = await app_by_slug(session, message.app)
    window = await session.get(KfWindow, (app.corp_id, message.open_kfid, message.external_userid))
    if window is None:
        raise Conflict(
            f"{message.external_userid!r} has not written to {message.open_kfid!r}: WeCom"
            " lets an account write only to customers who wrote first",
            code=ErrorCode.KF_WINDOW_CLOSED,
        )
    if window.last_message_at < datetime.now(UTC) - SESSION_WINDOW:
        raise Conflict(
            f"the customer's last message was at {window.last_message_at.isoformat()},"
            " more than 48 h ago",
            code=ErrorCode.KF_WINDOW_CLOSED,
        )
    if window.replies >= REPLIES_PER_MESSAGE:
        raise Conflict(
            f"{REPLIES_PER_MESSAGE} messages already sent since the customer's last message",
            code=ErrorCode.KF_REPLY_LIMIT,
        )
    return await enqueue(
        session,
        kind=ActionKind.KF_REPLY,
        app_id=app.id,
        corp_id=app.corp_id,
        target=message.external_userid,
        idempotency_key=api_action_key(ActionKind.KF_REPLY),
        payload={
            "open_kfid": message.open_kfid,
            "text": message.text,
            # kf/send_msg's msgid makes a repeated call (a runner taken over) one message
            "msgid": "a" + secrets.token_hex(15),
            "requested_by": by,
        },
    )
