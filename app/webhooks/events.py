"""The webhook event types, and what each says: a thin payload (ids and the fields a
receiver acts on, never the raw XML), `{type, timestamp, data}`, well under 20 KB.

The message id (`webhook-id`) is derived from what caused it (the stored event's id, or the
action's), so a WeCom event delivered three times is one message, and a retry of a delivery
keeps its id: receivers deduplicate on it."""

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from app.actions.errors import ActionError
from app.actions.kinds import ActionKind, ActionStatus
from app.actions.runner import ClaimedAction
from app.events import models as ev
from app.events.context import Context, event_time


class WebhookEventType(StrEnum):
    CUSTOMER_ADDED = "customer.added"  # with channel_id: the channel of its state, if any
    CUSTOMER_UPDATED = "customer.updated"
    CUSTOMER_DELETED_MEMBER = "customer.deleted_member"  # churn: the customer deleted the member
    MEMBER_DELETED_CUSTOMER = "member.deleted_customer"
    CUSTOMER_TAGS_CHANGED = "customer.tags_changed"
    GROUP_CREATED = "group.created"
    GROUP_DISMISSED = "group.dismissed"
    GROUP_MEMBER_JOINED = "group.member_joined"
    GROUP_MEMBER_LEFT = "group.member_left"
    MESSAGE_RECEIVED = "message.received"
    WELCOME_SENT = "welcome.sent"
    BROADCAST_COMPLETED = "broadcast.completed"  # every task settled, or the horizon passed
    ACTION_FAILED = "action.failed"
    ACTION_EXPIRED = "action.expired"
    WEBHOOK_TEST = "webhook.test"  # POST /api/v1/webhooks/{id}/test: sent to that one only


@dataclass(frozen=True, slots=True)
class Message:
    """One webhook message, the same for every subscription it goes to."""

    id: str
    type: WebhookEventType
    timestamp: datetime
    data: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"type": self.type, "timestamp": self.timestamp.isoformat(), "data": self.data}


def _message(
    type_: WebhookEventType, context: Context, event: ev.WecomEvent, **data: Any
) -> Message:
    return Message(
        id=f"msg_event{context.event_id}_{type_.replace('.', '_')}",
        type=type_,
        timestamp=event_time(event, context),
        data={"event_id": context.event_id, "corp_id": context.corp_id, **data},
    )


def messages_of(event: ev.WecomEvent, context: Context) -> list[Message]:
    """What a stored WeCom event tells subscribers (most events: nothing)."""
    kinds = WebhookEventType
    if isinstance(event, ev.AddExternalContact):
        return [
            _message(
                kinds.CUSTOMER_ADDED,
                context,
                event,
                external_userid=event.external_user_id,
                userid=event.user_id,
                state=event.state or None,
                half=isinstance(event, ev.AddHalfExternalContact),
                welcome_code=bool(event.welcome_code),
            )
        ]
    if isinstance(event, ev.EditExternalContact):
        return [
            _message(
                kinds.CUSTOMER_UPDATED,
                context,
                event,
                external_userid=event.external_user_id,
                userid=event.user_id,
            )
        ]
    if isinstance(event, ev.DelFollowUser):
        return [
            _message(
                kinds.CUSTOMER_DELETED_MEMBER,
                context,
                event,
                external_userid=event.external_user_id,
                userid=event.user_id,
            )
        ]
    if isinstance(event, ev.DelExternalContact):
        return [
            _message(
                kinds.MEMBER_DELETED_CUSTOMER,
                context,
                event,
                external_userid=event.external_user_id,
                userid=event.user_id,
                source=event.source or None,
            )
        ]
    if isinstance(event, ev.ChatCreate):
        return [_message(kinds.GROUP_CREATED, context, event, chat_id=event.chat_id)]
    if isinstance(event, ev.ChatDismiss):
        return [_message(kinds.GROUP_DISMISSED, context, event, chat_id=event.chat_id)]
    if isinstance(event, ev.ChatUpdate) and event.update_detail in ("add_member", "del_member"):
        joined = event.update_detail == "add_member"
        return [
            _message(
                kinds.GROUP_MEMBER_JOINED if joined else kinds.GROUP_MEMBER_LEFT,
                context,
                event,
                chat_id=event.chat_id,
                members=list(dict.fromkeys(event.mem_change_list)),
                scene=event.join_scene if joined else event.quit_scene,
            )
        ]
    if isinstance(event, ev.AppMessage):
        return [
            _message(
                kinds.MESSAGE_RECEIVED,
                context,
                event,
                source="app",
                msg_id=event.msg_id,
                sender=event.from_user,
                msg_type=event.kind[1],
                content=getattr(event, "content", None),
            )
        ]
    return []


def with_channel(message: Message, channel_id: int | None) -> Message:
    """A `customer.added` naming the channel (app/channels/) whose state brought the
    customer: null for a state that is no channel's, or none."""
    return replace(message, data={**message.data, "channel_id": channel_id})


def outcome_message(
    action: ClaimedAction,
    status: ActionStatus,
    reason: str | None,
    error: ActionError | None,
) -> Message | None:
    """What an action's end tells subscribers: a welcome sent, tags changed, an action that
    failed or expired. Never a webhook delivery's own end (that would feed itself)."""
    if action.kind == ActionKind.WEBHOOK:
        return None
    payload: dict[str, Any] = action.payload
    common: dict[str, Any] = {
        "action_id": action.id,
        "event_id": action.event_id,
        "corp_id": action.corp_id,
    }
    type_: WebhookEventType
    if status == ActionStatus.SUCCEEDED and action.kind == ActionKind.WELCOME:
        type_ = WebhookEventType.WELCOME_SENT
        data = {
            "external_userid": action.target,
            "userid": payload.get("user_id"),
            "state": payload.get("state") or None,
            "rule": payload.get("rule_name"),
        }
    elif status == ActionStatus.SUCCEEDED and action.kind == ActionKind.MARK_TAG:
        type_ = WebhookEventType.CUSTOMER_TAGS_CHANGED
        data = {
            "external_userid": action.target,
            "userid": payload.get("userid"),
            "added": payload.get("add_tag", []),
            "removed": payload.get("remove_tag", []),
        }
    elif status in (ActionStatus.FAILED, ActionStatus.EXPIRED):
        failed = status == ActionStatus.FAILED
        type_ = WebhookEventType.ACTION_FAILED if failed else WebhookEventType.ACTION_EXPIRED
        data = {
            "kind": action.kind,
            "target": action.target,
            "reason": reason,
            "error": {"code": error.code, "message": error.message} if error else None,
        }
    else:
        return None
    return Message(
        id=f"msg_action{action.id}_{type_.replace('.', '_')}",
        type=type_,
        timestamp=datetime.now(UTC),
        data={**common, **data},
    )


def kf_message(corp_id: str, open_kfid: str, message: dict[str, Any]) -> Message:
    """A customer's message to a 微信客服 account, as kf/sync_msg gave it."""
    msgid = str(message["msgid"])
    return Message(
        id=f"msg_kf_{hashlib.sha256(f'{corp_id}/{msgid}'.encode()).hexdigest()[:32]}",
        type=WebhookEventType.MESSAGE_RECEIVED,
        timestamp=datetime.fromtimestamp(int(message.get("send_time") or 0), UTC),
        data={
            "corp_id": corp_id,
            "source": "kf",
            "open_kfid": open_kfid,
            "msg_id": msgid,
            "sender": message.get("external_userid"),
            "msg_type": message.get("msgtype"),
            "content": (message.get("text") or {}).get("content"),
        },
    )
