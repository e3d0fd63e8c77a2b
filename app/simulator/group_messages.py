"""企业群发 (mass messages) as WeCom runs them (CHANNELS-WEBHOOKS.md §4): add_msg_template only
makes a task per member; nothing is sent until a member confirms in the client, which the
/sim control stands in for. Then each recipient is sent (1), was not a friend any more (2), or
had already received the corp's receive limit within its window (3).

The receive limit is a setting of the corp (Limits), not a constant: WeCom has changed it from
4 a month to 1 a day to days-in-month a month, and lets admins choose.

For a while after creation (Limits.distributing_seconds) a mass message is "being
distributed": reads of it answer 41063, as WeCom's do right after add_msg_template.
"""

import secrets
import time
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from app.simulator import fields
from app.simulator.control import known_corp
from app.simulator.state import ApiError, Corp, MemberTask, MsgTemplate, Recipient, SimState

ATTACHMENT_TYPES = {"image", "link", "miniprogram", "video", "file"}
MAX_TEXT_BYTES = 4000
MAX_ATTACHMENTS = 9
MAX_CUSTOMERS = 10_000
MAX_CHATS = 2000
MAX_TAGS_PER_GROUP = 100
REMINDERS_PER_DAY = 3
LIST_MAX_SECONDS = 31 * 86_400  # get_groupmsg_list_v2: a window of at most a month
CHAT_TYPES = ("single", "group")


async def add_msg_template(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    chat_type = body.get("chat_type") or "single"
    if chat_type not in CHAT_TYPES:
        raise ApiError(40058, "chat_type must be single or group")
    text, attachments = _content(corp, body)
    sender = body.get("sender") or ""
    if not isinstance(sender, str):
        raise ApiError(40058, "sender must be a userid")
    if sender and sender not in corp.members:
        raise ApiError(60011, "no privilege to access/modify contact/party/agent")
    if chat_type == "single":
        tasks, fail_list = _single(corp, body, sender)
    else:
        tasks, fail_list = _groups(corp, body, sender)
    if not tasks:
        raise ApiError(41048, "no customer to send to")
    msgid = f"msg{secrets.token_hex(14)}"
    corp.msg_templates[msgid] = MsgTemplate(
        msgid=msgid,
        chat_type=chat_type,
        create_time=int(time.time()),
        created_monotonic=time.monotonic(),
        sender=sender,
        text=text,
        attachments=attachments,
        allow_select=body.get("allow_select") is True,
        tasks=tasks,
        fail_list=fail_list,
    )
    return {"fail_list": fail_list, "msgid": msgid}


async def get_groupmsg_list_v2(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    """Mass messages made in a window of at most a month; ours are all corp-made (create_type
    0, no creator), so filter_type 1 or a creator finds none."""
    chat_type = body.get("chat_type")
    if chat_type not in CHAT_TYPES:
        raise ApiError(40058, "chat_type must be single or group")
    start, end = body.get("start_time"), body.get("end_time")
    if type(start) is not int or type(end) is not int:
        raise ApiError(40058, "start_time and end_time are required")
    if not 0 <= end - start <= LIST_MAX_SECONDS:
        raise ApiError(40058, "the time range must be within one month")
    filter_type = fields.integer(body, "filter_type", 2)
    if filter_type not in (0, 1, 2):
        raise ApiError(40058, "filter_type must be 0, 1 or 2")
    limit = _limit(body, default=50, most=100)
    corp_made = filter_type != 1 and not body.get("creator")
    matching = [
        (index, t)
        for index, t in enumerate(corp.msg_templates.values())
        if corp_made and t.chat_type == chat_type and start <= t.create_time <= end
    ]
    if any(_distributing(corp, t) for _, t in matching):
        raise ApiError(41063, "the mass message is being distributed, try again later")
    after = [(i, t) for i, t in matching if i >= _position(body)]
    page = after[:limit]
    return {
        "group_msg_list": [
            {
                "msgid": t.msgid,
                "create_time": t.create_time,
                "create_type": 0,
                **({"text": t.text} if t.text else {}),
                "attachments": t.attachments,
            }
            for _, t in page
        ],
        "next_cursor": str(page[-1][0] + 1) if len(after) > limit else "",
    }


async def get_groupmsg_task(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    template = _template(corp, body, reading=True)
    limit = _limit(body, default=500, most=1000)
    tasks = list(template.tasks.values())
    start = _position(body)
    page = tasks[start : start + limit]
    return {
        "task_list": [
            {"userid": t.userid, "status": t.status, "send_time": t.send_time} for t in page
        ],
        "next_cursor": str(start + limit) if start + limit < len(tasks) else "",
    }


async def get_groupmsg_send_result(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    """One member's recipients; for a group message only the groups already sent to (the
    owner has not picked the others yet)."""
    template = _template(corp, body, reading=True)
    userid = body.get("userid")
    if not userid or not isinstance(userid, str):
        raise ApiError(40058, "userid is required")
    limit = _limit(body, default=500, most=1000)
    task = template.tasks.get(userid)
    rows = task.recipients if task else []
    if template.chat_type == "group":
        rows = [r for r in rows if r.status != 0]
    start = _position(body)
    page = rows[start : start + limit]
    return {
        "send_list": [recipient_json(r) | {"userid": userid} for r in page],
        "next_cursor": str(start + limit) if start + limit < len(rows) else "",
    }


async def remind_groupmsg_send(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    template = _template(corp, body, reading=False)
    if template.cancelled:
        raise ApiError(41093, "the mass message was cancelled")
    now = time.time()
    template.reminders = [at for at in template.reminders if now - at < 86_400]
    if len(template.reminders) >= REMINDERS_PER_DAY:
        raise ApiError(41094, "at most 3 reminders per mass message in 24 hours")
    template.reminders.append(now)
    return {}


async def cancel_groupmsg_send(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    template = _template(corp, body, reading=False)
    if template.cancelled:
        raise ApiError(41093, "the mass message was cancelled")
    template.cancelled = True
    return {}


def confirm(corp: Corp, template: MsgTemplate, userid: str) -> list[Recipient]:
    """Member `userid` sends their part of `template` (nothing if it was cancelled or they
    already have): the recipients they sent to, each with its status."""
    task = template.tasks[userid]
    if template.cancelled or task.status == 2:
        return []
    now = time.time()
    limits = corp.limits
    for recipient in task.recipients:
        if not _still_reachable(corp, userid, recipient):
            recipient.status = 2
            continue
        key = recipient.external_userid or recipient.chat_id
        window = [
            at for at in corp.received.get(key, []) if now - at < limits.receive_window_seconds
        ]
        if len(window) >= limits.receive_limit:
            recipient.status = 3
        else:
            recipient.status, recipient.send_time = 1, int(now)
            window.append(now)
        corp.received[key] = window
    task.status, task.send_time = 2, int(now)
    return task.recipients


def recipient_json(recipient: Recipient) -> dict[str, Any]:
    who = (
        {"chat_id": recipient.chat_id}
        if recipient.chat_id
        else {"external_userid": recipient.external_userid}
    )
    return who | {"status": recipient.status, "send_time": recipient.send_time}


def template_json(template: MsgTemplate) -> dict[str, Any]:
    return {
        "msgid": template.msgid,
        "chat_type": template.chat_type,
        "create_time": template.create_time,
        "sender": template.sender,
        "text": template.text,
        "attachments": template.attachments,
        "allow_select": template.allow_select,
        "fail_list": template.fail_list,
        "cancelled": template.cancelled,
        "reminders": [int(at) for at in template.reminders],
        "tasks": [
            {
                "userid": task.userid,
                "status": task.status,
                "send_time": task.send_time,
                "recipients": [recipient_json(r) for r in task.recipients],
            }
            for task in template.tasks.values()
        ],
    }


# helpers ---------------------------------------------------------------------------------


def _content(corp: Corp, body: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Any]]:
    text = body.get("text")
    content = text.get("content") if isinstance(text, dict) else None
    attachments = body.get("attachments") or []
    if not isinstance(attachments, list):
        raise ApiError(40058, "attachments must be a list")
    if not content and not attachments:
        raise ApiError(40058, "text and attachments cannot both be empty")
    if content is not None and (
        not isinstance(content, str) or len(content.encode()) > MAX_TEXT_BYTES
    ):
        raise ApiError(45002, "text.content is over 4000 bytes")
    if len(attachments) > MAX_ATTACHMENTS:
        raise ApiError(41064, "at most 9 attachments")
    for attachment in attachments:
        kind = attachment.get("msgtype") if isinstance(attachment, dict) else None
        if kind not in ATTACHMENT_TYPES or not isinstance(attachment.get(kind), dict):
            raise ApiError(41065, "invalid attachment type")
    corp.require_known_media(body)
    return ({"content": content} if content else None), attachments


def _single(
    corp: Corp, body: dict[str, Any], sender: str
) -> tuple[dict[str, MemberTask], list[str]]:
    """Each customer to the member who follows them (the sender, if one is named; else the
    most recent follow); those nobody (or not the sender) follows fail. Customers whose
    follow misses the tag_filter are left out without failing."""
    ids = fields.items(body.get("external_userid"), str, "external_userid")
    if len(ids) > MAX_CUSTOMERS:
        raise ApiError(40058, "at most 10000 external_userid")
    if not ids and not sender:
        raise ApiError(40058, "external_userid and sender cannot both be empty")
    groups = _tag_filter(body.get("tag_filter"))
    if not ids:
        ids = [c.external_userid for c in corp.contacts.values() if sender in c.follows]
    tasks: dict[str, MemberTask] = {}
    fail_list: list[str] = []
    for external in dict.fromkeys(ids):
        contact = corp.contacts.get(external)
        follows = {
            userid: follow
            for userid, follow in (contact.follows.items() if contact else ())
            if not sender or userid == sender
        }
        if not follows:
            fail_list.append(external)
            continue
        tagged = {
            userid: int(follow.get("createtime", 0))
            for userid, follow in follows.items()
            if all(set(follow.get("tag_id", ())) & tags for tags in groups)
        }
        if tagged:
            userid = max(tagged, key=lambda u: tagged[u])  # the most recent follow
            task = tasks.setdefault(userid, MemberTask(userid))
            task.recipients.append(Recipient(external_userid=external))
    return tasks, fail_list


def _groups(
    corp: Corp, body: dict[str, Any], sender: str
) -> tuple[dict[str, MemberTask], list[str]]:
    """The sender's groups (those named, or all they own); groups unknown or owned by
    someone else fail."""
    if not sender:
        raise ApiError(40058, "sender is required for chat_type group")
    chats = fields.items(body.get("chat_id_list"), str, "chat_id_list")
    if len(chats) > MAX_CHATS:
        raise ApiError(40058, "at most 2000 chat_id_list")
    if not chats:
        chats = [g.chat_id for g in corp.groups.values() if g.owner == sender]
    fail_list: list[str] = []
    task = MemberTask(sender)
    for chat_id in dict.fromkeys(chats):
        group = corp.groups.get(chat_id)
        if group is None or group.owner != sender:
            fail_list.append(chat_id)
        else:
            task.recipients.append(Recipient(chat_id=chat_id))
    return ({sender: task} if task.recipients else {}), fail_list


def _tag_filter(value: object) -> list[set[str]]:
    """tag_filter.group_list: tags OR-ed within a group, groups AND-ed."""
    if value is None:
        return []
    group_list = value.get("group_list") if isinstance(value, dict) else None
    if not isinstance(group_list, list):
        raise ApiError(40058, "tag_filter.group_list must be a list")
    groups = []
    for group in group_list:
        tags = fields.items(
            group.get("tag_list") if isinstance(group, dict) else None, str, "tag_list"
        )
        if len(tags) > MAX_TAGS_PER_GROUP:
            raise ApiError(40058, "at most 100 tags per tag group")
        groups.append(set(tags))
    return groups


def _limit(body: dict[str, Any], *, default: int, most: int) -> int:
    limit = fields.integer(body, "limit", default)
    if not 1 <= limit <= most:
        raise ApiError(40058, f"limit must be 1..{most}")
    return limit


def _position(body: dict[str, Any]) -> int:
    """Where a page starts: the cursor is an index into an append-only list."""
    cursor = str(body.get("cursor") or "")
    return int(cursor) if cursor.isdigit() else 0


def _template(corp: Corp, body: dict[str, Any], *, reading: bool) -> MsgTemplate:
    msgid = body.get("msgid")
    if not msgid:
        raise ApiError(41046, "missing msgid")
    template = corp.msg_templates.get(str(msgid))
    if template is None:
        raise ApiError(41047, "invalid msgid")
    if reading and _distributing(corp, template):
        raise ApiError(41063, "the mass message is being distributed, try again later")
    return template


def _distributing(corp: Corp, template: MsgTemplate) -> bool:
    return time.monotonic() - template.created_monotonic < corp.limits.distributing_seconds


def _still_reachable(corp: Corp, userid: str, recipient: Recipient) -> bool:
    if recipient.chat_id:
        return recipient.chat_id in corp.groups
    contact = corp.contacts.get(recipient.external_userid)
    return contact is not None and userid in contact.follows


# control ---------------------------------------------------------------------------------


class ConfirmIn(BaseModel):
    userid: str | None = None  # None: every member who has not sent yet


def control_router(sim: SimState) -> APIRouter:
    router = APIRouter(prefix="/sim", tags=["simulator control"])

    @router.get("/corps/{corp_id}/msg_templates")
    async def msg_templates(corp_id: str) -> list[dict[str, Any]]:
        return [template_json(t) for t in known_corp(sim, corp_id).msg_templates.values()]

    @router.post("/corps/{corp_id}/msg_templates/{msgid}/confirm")
    async def confirm_template(
        corp_id: str, msgid: str, member: ConfirmIn | None = None
    ) -> dict[str, Any]:
        """Members confirm the mass message in their client, and it is sent (unless it was
        cancelled: then nothing is). No body: every member who has not sent yet."""
        member = member or ConfirmIn()
        corp = known_corp(sim, corp_id)
        template = corp.msg_templates.get(msgid)
        if template is None:
            raise HTTPException(404, f"no mass message {msgid!r}")
        if member.userid is not None and member.userid not in template.tasks:
            raise HTTPException(404, f"{member.userid!r} has nothing to send of {msgid!r}")
        userids = [member.userid] if member.userid else list(template.tasks)
        sent_by: list[str] = []
        recipients: list[dict[str, Any]] = []
        for userid in userids:
            sent = confirm(corp, template, userid)
            if sent:
                sent_by.append(userid)
                recipients += [recipient_json(r) | {"userid": userid} for r in sent]
        return {
            "msgid": msgid,
            "cancelled": template.cancelled,
            "sent_by": sent_by,
            "recipients": recipients,
        }

    return router
