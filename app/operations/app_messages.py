"""Message members through an app (message/send, PROTOCOL.md §5.8) on request: text or
markdown to users, departments or tags. The action and its handler."""

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import Enqueued, enqueue
from app.actions.kinds import ActionKind, ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomRun
from app.errors import FieldError, Invalid
from app.operations.common import api_action_key
from app.wecom_apps import app_by_slug


@dataclass(frozen=True, slots=True)
class AppMessage:
    app: str
    msgtype: Literal["text", "markdown"]
    content: str
    touser: list[str]
    toparty: list[str]
    totag: list[str]


async def send_app_message(session: AsyncSession, message: AppMessage, *, by: str) -> Enqueued:
    app = await app_by_slug(session, message.app)
    if app.agent_id is None:
        raise Invalid(
            [FieldError("app", f"app {message.app!r} has no agent_id; message/send needs one")]
        )
    if not (message.touser or message.toparty or message.totag):
        raise Invalid([FieldError("touser", "give touser, toparty or totag")])
    return await enqueue(
        session,
        kind=ActionKind.APP_MESSAGE,
        app_id=app.id,
        corp_id=app.corp_id,
        target="|".join(message.touser) or f"party:{'|'.join(message.toparty)}",
        idempotency_key=api_action_key(ActionKind.APP_MESSAGE),
        payload={
            "agentid": app.agent_id,
            "msgtype": message.msgtype,
            "content": message.content,
            "touser": message.touser,
            "toparty": message.toparty,
            "totag": message.totag,
            "requested_by": by,
        },
    )


async def deliver_app_message(run: WecomRun) -> Outcome:
    """The action's handler. WeCom answers 0 even when some recipients are unknown; they
    are named in the reason."""
    payload: dict[str, Any] = run.action.payload
    msgtype = payload["msgtype"]
    body = await run.client.call(
        run.credentials,
        "POST",
        "message/send",
        json={
            "touser": "|".join(payload["touser"]),
            "toparty": "|".join(payload["toparty"]),
            "totag": "|".join(payload["totag"]),
            "msgtype": msgtype,
            "agentid": payload["agentid"],
            msgtype: {"content": payload["content"]},
        },
        deadline=run.deadline_monotonic,
    )
    invalid = {
        name: body[name] for name in ("invaliduser", "invalidparty", "invalidtag") if body.get(name)
    }
    reason = f"msgid {body.get('msgid')}"
    if invalid:
        reason += "; not delivered to " + ", ".join(f"{k} {v}" for k, v in invalid.items())
    return Outcome(ActionStatus.SUCCEEDED, reason)
