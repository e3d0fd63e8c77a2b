"""微信客服 (WeChat Customer Service): pull, answer, welcome (PROTOCOL.md §4.6, §5.7).

A kf_msg_or_event callback only says "something new" and carries a Token. The kf_sync action
pulls with kf/sync_msg from the account's stored cursor, holding that cursor's row lock while
it reads, so two replicas never read the same page and a restart resumes where it stopped:
each page's messages, the actions they cause and the new cursor are committed together.
Customer text that a reply rule matches becomes a kf_reply action (kf/send_msg, with a msgid
derived from the customer's message, so a repeat cannot send twice); an enter_session with a
welcome_code becomes a kf_welcome action (kf/send_msg_on_event, 20 s deadline).
"""

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import enqueue
from app.actions.kinds import ActionKind, ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomRun
from app.automations.replies import choose_reply
from app.automations.rules import ReplyContent, WelcomeContent, render
from app.automations.store import LoadedRule, enabled_rules
from app.automations.triggers import (
    TAG_DEADLINE,
    choose_welcome,
    enqueue_mark_tags,
    friend_of,
)
from app.webhooks.events import kf_message
from app.webhooks.publish import publish

SESSION_WINDOW = timedelta(hours=48)  # send_msg only within 48 h of the customer's message
REPLIES_PER_MESSAGE = 5  # …and at most 5 messages per customer message
KF_CODE_SECONDS = 20

_LOCK_CURSOR = text(
    """
    INSERT INTO kf_cursors (corp_id, open_kfid) VALUES (:corp_id, :open_kfid)
    ON CONFLICT (corp_id, open_kfid) DO UPDATE SET corp_id = excluded.corp_id
    RETURNING cursor
    """
)  # the no-op update takes the row lock, like SELECT … FOR UPDATE, creating the row if new
_SAVE_CURSOR = text(
    "UPDATE kf_cursors SET cursor = :cursor, updated_at = now()"
    " WHERE corp_id = :corp_id AND open_kfid = :open_kfid"
)
_STORE_MESSAGE = text(
    """
    INSERT INTO messages (corp_id, app_id, source, msg_id, sender, open_kfid, msg_type,
                          content, payload, sent_at)
    VALUES (:corp_id, :app_id, 'kf', :msg_id, :sender, :open_kfid, :msg_type, :content,
            CAST(:payload AS jsonb), :sent_at)
    ON CONFLICT (corp_id, source, msg_id) DO NOTHING
    RETURNING id
    """
)


_CUSTOMER_WROTE = text(
    """
    INSERT INTO kf_windows (corp_id, open_kfid, external_userid, last_message_at, replies)
    VALUES (:corp_id, :open_kfid, :customer, :at, 0)
    ON CONFLICT (corp_id, open_kfid, external_userid) DO UPDATE SET
        last_message_at = excluded.last_message_at, replies = 0
    WHERE kf_windows.last_message_at <= excluded.last_message_at  -- each new message, once
    """
)
# A reply takes one of the window's five places before it is sent, and gives it back if the
# send fails (a crash mid-call keeps it: better one reply too few than one WeCom refuses).
_TAKE_PLACE = """
    UPDATE kf_windows SET replies = replies + 1
    WHERE corp_id = $1 AND open_kfid = $2 AND external_userid = $3
      AND replies < $4 AND last_message_at > now() - $5::interval
    RETURNING replies
"""
_GIVE_BACK_PLACE = """
    UPDATE kf_windows SET replies = greatest(replies - 1, 0)
    WHERE corp_id = $1 AND open_kfid = $2 AND external_userid = $3
"""
_WINDOW = """
    SELECT last_message_at, replies FROM kf_windows
    WHERE corp_id = $1 AND open_kfid = $2 AND external_userid = $3
"""


def _sent_at(message: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(message.get("send_time", time.time()), UTC)


def _reply_msgid(source_msgid: str) -> str:
    """kf/send_msg's msgid: ≤32 of [0-9a-zA-Z_-], unique per account, the same on a repeat."""
    return "r" + hashlib.sha256(source_msgid.encode()).hexdigest()[:31]


async def _tag_by_keyword(
    session: AsyncSession, run: WecomRun, message: dict[str, Any], rules: list[LoadedRule]
) -> int:
    """A customer's words that a keyword tag rule matches: one mark_tag for all of them."""
    customer = message["external_userid"]
    text = message["text"]["content"]
    matched = [r for r in rules if r.match.matches_message(text, open_kfid=run.action.target)]
    if not matched:
        return 0
    await enqueue_mark_tags(
        session,
        app_id=run.app_id,
        corp_id=run.corp_id,
        event_id=run.action.event_id,
        external=customer,
        user_id=await friend_of(session, run.corp_id, customer),
        matched=matched,
        key=f"{ActionKind.MARK_TAG}:kf:{run.corp_id}:{message['msgid']}",
        deadline=datetime.now(UTC) + TAG_DEADLINE,
    )
    return 1


async def kf_sync(run: WecomRun) -> Outcome:
    action = run.action
    open_kfid = action.target
    pulled = replies = welcomes = tags = 0
    async with run.sessionmaker.begin() as session:
        connection = await session.connection()
        keys = {"corp_id": run.corp_id, "open_kfid": open_kfid}
        cursor = (await connection.execute(_LOCK_CURSOR, keys)).scalar_one()
        reply_rules = await enabled_rules(session, "reply", run.app_id)
        welcome_rules = await enabled_rules(session, "welcome", run.app_id)
        tag_rules = await enabled_rules(session, "tag", run.app_id)
        while True:
            body = await run.client.call(
                run.credentials,
                "POST",
                "kf/sync_msg",
                json={
                    "cursor": cursor,
                    "token": action.payload.get("token", ""),
                    "limit": 1000,
                    "open_kfid": open_kfid,
                },
                deadline=run.deadline_monotonic,
            )
            for message in body.get("msg_list", []):
                event = message.get("event") or {}
                sender = message.get("external_userid") or event.get("external_userid", "")
                content = (message.get("text") or {}).get("content")
                stored = await connection.execute(
                    _STORE_MESSAGE,
                    {
                        **keys,
                        "app_id": run.app_id,
                        "msg_id": message["msgid"],
                        "sender": sender,
                        "msg_type": message.get("msgtype", ""),
                        "content": content,
                        "payload": json.dumps(message, ensure_ascii=False),
                        "sent_at": _sent_at(message),
                    },
                )
                if stored.first() is None:
                    continue  # read before: already answered, if it needed an answer
                pulled += 1
                if message.get("origin") == 3 and sender:
                    await connection.execute(
                        _CUSTOMER_WROTE,
                        {**keys, "customer": sender, "at": _sent_at(message)},
                    )
                    await publish(
                        session,
                        kf_message(run.corp_id, open_kfid, message),
                        app_id=run.app_id,
                        corp_id=run.corp_id,
                        event_id=action.event_id,
                    )
                common = {
                    "app_id": run.app_id,
                    "corp_id": run.corp_id,
                    "target": sender,
                    "event_id": action.event_id,
                }
                if message.get("origin") == 3 and content:
                    tags += await _tag_by_keyword(session, run, message, tag_rules)
                    rule = choose_reply(reply_rules, content, open_kfid=open_kfid)
                    if rule is not None:
                        replies += 1
                        assert isinstance(rule.content, ReplyContent)
                        await enqueue(
                            session,
                            kind=ActionKind.KF_REPLY,
                            **common,
                            idempotency_key=f"{ActionKind.KF_REPLY}:{run.corp_id}:{message['msgid']}",
                            payload={
                                "open_kfid": open_kfid,
                                "text": rule.content.text,
                                "msgid": _reply_msgid(message["msgid"]),
                                "rule_id": rule.id,
                                "rule_name": rule.name,
                            },
                        )
                code = event.get("welcome_code")
                if event.get("event_type") == "enter_session" and code:
                    at = datetime.fromtimestamp(message.get("send_time", time.time()), UTC)
                    rule = choose_welcome(
                        welcome_rules,
                        state=event.get("scene_param", ""),
                        user_id="",
                        at=at,
                        open_kfid=open_kfid,
                    )
                    key = f"{ActionKind.KF_WELCOME}:{run.corp_id}:{code}"
                    if rule is None:
                        await enqueue(
                            session,
                            kind=ActionKind.KF_WELCOME,
                            **common,
                            idempotency_key=key,
                            skipped=f"no kf welcome rule for {open_kfid}",
                        )
                        continue
                    welcomes += 1
                    assert isinstance(rule.content, WelcomeContent)
                    await enqueue(
                        session,
                        kind=ActionKind.KF_WELCOME,
                        **common,
                        idempotency_key=key,
                        deadline=at + timedelta(seconds=KF_CODE_SECONDS),
                        payload={
                            "code": code,
                            "text": render(rule.content.text, {}),
                            "msgid": _reply_msgid(code),
                            "rule_id": rule.id,
                            "rule_name": rule.name,
                        },
                    )
            cursor = body.get("next_cursor") or cursor
            await connection.execute(_SAVE_CURSOR, {**keys, "cursor": cursor})
            if not body.get("has_more"):
                break
    return Outcome(
        ActionStatus.SUCCEEDED,
        f"{pulled} new, {replies} replies, {welcomes} welcomes, {tags} taggings",
    )


async def kf_reply(run: WecomRun) -> Outcome:
    """Within the customer's send window (PROTOCOL.md §5.7), else `skipped` saying which
    limit it would break: WeCom accepts such a send and then fails to deliver it."""
    payload: dict[str, Any] = run.action.payload
    window = (run.corp_id, payload["open_kfid"], run.action.target)
    taken = await run.db.fetchval(_TAKE_PLACE, *window, REPLIES_PER_MESSAGE, SESSION_WINDOW)
    if taken is None:
        return Outcome(ActionStatus.SKIPPED, await _window_closed(run, window))
    try:
        await run.client.call(
            run.credentials,
            "POST",
            "kf/send_msg",
            json={
                "touser": run.action.target,
                "open_kfid": payload["open_kfid"],
                "msgid": payload["msgid"],
                "msgtype": "text",
                "text": {"content": payload["text"]},
            },
            deadline=run.deadline_monotonic,
        )
    except Exception:
        await run.db.execute(_GIVE_BACK_PLACE, *window)
        raise
    if "rule_name" in payload:
        return Outcome(ActionStatus.SUCCEEDED, f"rule {payload['rule_name']!r}")
    return Outcome(ActionStatus.SUCCEEDED, f"asked for by {payload.get('requested_by')}")


async def _window_closed(run: WecomRun, window: tuple[str, str, str]) -> str:
    row = await run.db.fetchrow(_WINDOW, *window)
    if row is None:
        return "no message from this customer has been read"
    if row["replies"] >= REPLIES_PER_MESSAGE:
        return f"{REPLIES_PER_MESSAGE} messages already sent since the customer's last message"
    return "more than 48 h since the customer's last message"


async def kf_welcome(run: WecomRun) -> Outcome:
    payload: dict[str, Any] = run.action.payload
    await run.client.call(
        run.credentials,
        "POST",
        "kf/send_msg_on_event",
        json={
            "code": payload["code"],
            "msgid": payload["msgid"],
            "msgtype": "text",
            "text": {"content": payload["text"]},
        },
        deadline=run.deadline_monotonic,
        backoff=0.05,
    )
    return Outcome(ActionStatus.SUCCEEDED, f"rule {payload.get('rule_name')!r}")
