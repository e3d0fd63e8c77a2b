"""What an event makes happen: called by the processor after the projection, in the same
transaction, so the actions exist if and only if the event was processed. Exactly once
follows from the actions' idempotency keys (the welcome_code itself for welcomes)."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import ActionKind
from app.automations.churn import alert_churn
from app.automations.rules import WelcomeMatch
from app.automations.store import LoadedRule, RuleCache
from app.events import models as ev
from app.events.context import Context, event_time
from app.models import Follow
from app.processing.writes import defer_enqueue, flush

KF_TOKEN_LIFETIME = timedelta(minutes=10)  # the callback's Token, for sync_msg
WELCOME_CODE_SECONDS = 20  # PROTOCOL.md §5.2: valid 20 s, usable once
TAG_DEADLINE = timedelta(minutes=10)


def choose_welcome(
    rules: list[LoadedRule],
    *,
    state: str,
    user_id: str,
    at: datetime,
    open_kfid: str | None = None,
) -> LoadedRule | None:
    """The most specific matching rule; among equally specific ones, the highest priority."""
    matching = [
        r
        for r in rules
        if isinstance(r.match, WelcomeMatch)
        and r.match.open_kfid == open_kfid
        and r.match.matches(state=state, user_id=user_id, at=at)
    ]
    return max(matching, key=lambda r: (r.match.specificity(), r.priority, -r.id), default=None)


async def automate(
    session: AsyncSession, event: ev.WecomEvent, context: Context, rules: RuleCache
) -> None:
    if isinstance(event, ev.AddExternalContact):
        await _welcome(session, event, context, rules)
        await _tag_by_channel(session, event, context, rules)
    elif isinstance(event, ev.DelFollowUser):  # the customer left; never DelExternalContact
        # Without a churn rule there is nothing to alert, and nothing to look up: the
        # departure's lookup (and the flush it needs) was a round trip per churn.
        if await rules.get(session, "churn", context.app_id):
            await flush(session)  # the alert reads the follows the projection wrote
            await alert_churn(session, event, context, rules)
    elif isinstance(event, ev.ChatUpdate) and event.update_detail == "add_member":
        await _tag_by_group(session, event, context, rules)
    elif isinstance(event, ev.KfMsgOrEvent) and event.open_kf_id:
        # The callback only says "something new": pull it (app/automations/kf.py).
        await defer_enqueue(
            session,
            kind=ActionKind.KF_SYNC,
            app_id=context.app_id,
            corp_id=context.corp_id,
            target=event.open_kf_id,
            event_id=context.event_id,
            idempotency_key=f"{ActionKind.KF_SYNC}:{context.event_id}",
            deadline=context.received_at + KF_TOKEN_LIFETIME,
            payload={"token": event.token},
        )


async def _welcome(
    session: AsyncSession, event: ev.AddExternalContact, context: Context, rules: RuleCache
) -> None:
    common: dict[str, Any] = {
        "kind": ActionKind.WELCOME,
        "app_id": context.app_id,
        "corp_id": context.corp_id,
        "target": event.external_user_id,
        "event_id": context.event_id,
    }
    if not event.welcome_code:
        await defer_enqueue(
            session,
            **common,
            idempotency_key=f"{ActionKind.WELCOME}:event:{context.event_id}",
            skipped="no WelcomeCode in the event: the channel or the console sends "
            "its own welcome, or the customer already chatted",
        )
        return
    at = event_time(event, context)
    key = f"{ActionKind.WELCOME}:{context.corp_id}:{event.welcome_code}"
    chosen = choose_welcome(
        await rules.get(session, "welcome", context.app_id),
        state=event.state,
        user_id=event.user_id,
        at=at,
    )
    if chosen is None:
        await defer_enqueue(
            session,
            **common,
            idempotency_key=key,
            skipped=f"no enabled welcome rule matches state {event.state!r}",
        )
        return
    await defer_enqueue(
        session,
        **common,
        idempotency_key=key,
        deadline=at + timedelta(seconds=WELCOME_CODE_SECONDS),
        payload={
            "welcome_code": event.welcome_code,
            "user_id": event.user_id,
            "state": event.state,
            "rule_id": chosen.id,
            "rule_name": chosen.name,
            "content": chosen.content.model_dump(mode="json"),
        },
    )


async def enqueue_mark_tags(
    session: AsyncSession,
    *,
    app_id: int,
    corp_id: str,
    event_id: int | None,
    external: str,
    user_id: str | None,
    matched: list[LoadedRule],
    key: str,
    deadline: datetime,
) -> None:
    """One mark_tag action for all the rules that fired for this customer at once; without
    a member the customer is a friend of (WeCom would answer 84061) it is `skipped`."""
    add = sorted({t for r in matched for t in r.content.add_tags})
    remove = sorted({t for r in matched for t in r.content.remove_tags} - set(add))
    common: dict[str, Any] = {
        "kind": ActionKind.MARK_TAG,
        "app_id": app_id,
        "corp_id": corp_id,
        "target": external,
        "event_id": event_id,
        "idempotency_key": key,
    }
    if not user_id:
        await defer_enqueue(session, **common, skipped="the customer is not a friend of any member")
        return
    await defer_enqueue(
        session,
        **common,
        deadline=deadline,
        payload={
            "userid": user_id,
            "add_tag": add,
            "remove_tag": remove,
            "rule_ids": [r.id for r in matched],
        },
    )


async def friend_of(session: AsyncSession, corp_id: str, external: str) -> str | None:
    """The member the customer most recently became a friend of, if any."""
    return await session.scalar(
        select(Follow.userid)
        .where(
            Follow.corp_id == corp_id,
            Follow.external_userid == external,
            Follow.status == "active",
        )
        .order_by(Follow.added_at.desc().nulls_last())
        .limit(1)
    )


def _tagging(context: Context, external: str) -> dict[str, Any]:
    return {
        "app_id": context.app_id,
        "corp_id": context.corp_id,
        "event_id": context.event_id,
        "external": external,
        "key": f"{ActionKind.MARK_TAG}:{context.event_id}:{external}",
        "deadline": context.received_at + TAG_DEADLINE,
    }


async def _tag_by_channel(
    session: AsyncSession, event: ev.AddExternalContact, context: Context, rules: RuleCache
) -> None:
    if not event.state:
        return
    matched = [
        r
        for r in await rules.get(session, "tag", context.app_id)
        if r.match.matches_channel(event.state)
    ]
    if matched:
        await enqueue_mark_tags(
            session,
            **_tagging(context, event.external_user_id),
            user_id=event.user_id,
            matched=matched,
        )


async def _tag_by_group(
    session: AsyncSession, event: ev.ChatUpdate, context: Context, rules: RuleCache
) -> None:
    matched = [
        r
        for r in await rules.get(session, "tag", context.app_id)
        if r.match.matches_group(event.chat_id)
    ]
    if not matched:
        return
    await flush(session)  # friend_of reads the follows the projection wrote
    for member in dict.fromkeys(event.mem_change_list):
        if not member.startswith(("wm", "wo")):  # corp members are not customers
            continue
        await enqueue_mark_tags(
            session,
            **_tagging(context, member),
            user_id=await friend_of(session, context.corp_id, member),
            matched=matched,
        )
