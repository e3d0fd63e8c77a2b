"""Project one typed event into the customer state, inside the processor's transaction.

Every projection is an upsert, so it is idempotent; and every row that events change keeps
`changed_at`, the WeCom CreateTime of the last event applied to it. An event older than that
changes nothing: WeCom does not promise order, and a late add must not resurrect a customer
who has since deleted the member. Facts WeCom's callbacks do not carry (names, remarks, tags,
group members' details) are fetched by enrichment actions written here and run later, outside
the transaction.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, update
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.events import models as ev
from app.models import (
    CustomerGroup,
    Department,
    ExternalContact,
    Follow,
    GroupMember,
    Member,
    Message,
    Tag,
    TagGroup,
)
from app.processing.enqueue import enqueue

ENRICH_CONTACT = "enrich_contact"
ENRICH_GROUP = "enrich_group"
SYNC_TAGS = "sync_tags"


@dataclass(frozen=True, slots=True)
class Context:
    """Where an event came from."""

    event_id: int
    app_id: int
    corp_id: str
    received_at: datetime


def event_time(event: ev.WecomEvent, context: Context) -> datetime:
    if event.create_time > 0:
        return datetime.fromtimestamp(event.create_time, tz=UTC)
    return context.received_at


def _not_older(statement: Insert, table: Any) -> ColumnElement[bool]:
    """The upsert's WHERE: apply only if this event is not older than the last one applied."""
    return or_(table.changed_at.is_(None), table.changed_at <= statement.excluded.changed_at)


async def _enrich(session: AsyncSession, kind: str, target: str, context: Context) -> None:
    await enqueue(
        session,
        kind=kind,
        app_id=context.app_id,
        corp_id=context.corp_id,
        target=target,
        event_id=context.event_id,
        idempotency_key=f"{kind}:{context.event_id}:{target}",
    )


# customers ------------------------------------------------------------------------------


async def _contact_seen(
    session: AsyncSession, context: Context, external_userid: str, at: datetime
) -> None:
    statement = insert(ExternalContact).values(
        corp_id=context.corp_id, external_userid=external_userid, first_seen_at=at
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["corp_id", "external_userid"],
            set_={
                "first_seen_at": func.least(
                    func.coalesce(ExternalContact.first_seen_at, statement.excluded.first_seen_at),
                    statement.excluded.first_seen_at,
                )
            },
        )
    )


async def _follow(
    session: AsyncSession, context: Context, event: ev.ExternalContactEvent, values: dict[str, Any]
) -> None:
    at = event_time(event, context)
    statement = insert(Follow).values(
        corp_id=context.corp_id,
        userid=event.user_id,
        external_userid=event.external_user_id,
        changed_at=at,
        **values,
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["corp_id", "userid", "external_userid"],
            set_={**{k: statement.excluded[k] for k in values}, "changed_at": at},
            where=_not_older(statement, Follow),
        )
    )


async def added(session: AsyncSession, event: ev.AddExternalContact, context: Context) -> None:
    at = event_time(event, context)
    half = isinstance(event, ev.AddHalfExternalContact)
    await _contact_seen(session, context, event.external_user_id, at)
    await _follow(
        session,
        context,
        event,
        {
            "status": "half" if half else "active",
            "added_at": at,
            "state": event.state or None,
        },
    )
    await _enrich(session, ENRICH_CONTACT, event.external_user_id, context)


async def edited(session: AsyncSession, event: ev.EditExternalContact, context: Context) -> None:
    await _contact_seen(session, context, event.external_user_id, event_time(event, context))
    await _enrich(session, ENRICH_CONTACT, event.external_user_id, context)


async def deleted_by_member(
    session: AsyncSession, event: ev.DelExternalContact, context: Context
) -> None:
    await _follow(
        session,
        context,
        event,
        {
            "status": "deleted_by_member",
            "deleted_by_member_at": event_time(event, context),
            "delete_source": event.source or None,
        },
    )


async def deleted_by_customer(
    session: AsyncSession, event: ev.DelFollowUser, context: Context
) -> None:
    await _follow(
        session,
        context,
        event,
        {
            "status": "deleted_by_customer",
            "deleted_by_customer_at": event_time(event, context),
        },
    )


# customer groups ------------------------------------------------------------------------


async def _group(
    session: AsyncSession, context: Context, chat_id: str, at: datetime, values: dict[str, Any]
) -> None:
    statement = insert(CustomerGroup).values(
        corp_id=context.corp_id, chat_id=chat_id, changed_at=at, **values
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["corp_id", "chat_id"],
            set_={**{k: statement.excluded[k] for k in values}, "changed_at": at},
            where=_not_older(statement, CustomerGroup),
        )
    )


async def group_created(session: AsyncSession, event: ev.ChatCreate, context: Context) -> None:
    at = event_time(event, context)
    await _group(session, context, event.chat_id, at, {"created_at": at})
    await _enrich(session, ENRICH_GROUP, event.chat_id, context)


async def group_dismissed(session: AsyncSession, event: ev.ChatDismiss, context: Context) -> None:
    at = event_time(event, context)
    await _group(session, context, event.chat_id, at, {"dismissed_at": at})


async def group_updated(session: AsyncSession, event: ev.ChatUpdate, context: Context) -> None:
    at = event_time(event, context)
    await _group(session, context, event.chat_id, at, {})
    if event.update_detail == "add_member":
        values = {
            "joined_at": at,
            "join_scene": event.join_scene,
            "quit_at": None,
            "quit_scene": None,
        }
    elif event.update_detail == "del_member":
        values = {"quit_at": at, "quit_scene": event.quit_scene}
    else:
        values = {}
    for member_id in event.mem_change_list if values else []:
        statement = insert(GroupMember).values(
            corp_id=context.corp_id,
            chat_id=event.chat_id,
            member_id=member_id,
            changed_at=at,
            **values,
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["corp_id", "chat_id", "member_id"],
                set_={**{k: statement.excluded[k] for k in values}, "changed_at": at},
                where=_not_older(statement, GroupMember),
            )
        )
    await _enrich(session, ENRICH_GROUP, event.chat_id, context)


# tags -----------------------------------------------------------------------------------


async def tag_changed(session: AsyncSession, event: ev.ExternalTagEvent, context: Context) -> None:
    """WeCom says only which tag or group changed; the list itself is re-read (sync_tags).
    A deletion is applied at once, so a deleted tag disappears without waiting for it."""
    if isinstance(event, ev.TagDelete) and event.id:
        at = event_time(event, context)
        table = TagGroup if event.tag_type == "tag_group" else Tag
        key = TagGroup.group_id if table is TagGroup else Tag.tag_id
        await session.execute(
            update(table)
            .where(table.corp_id == context.corp_id, key == event.id)
            .values(deleted_at=at)
        )
        if table is TagGroup:
            await session.execute(
                update(Tag)
                .where(Tag.corp_id == context.corp_id, Tag.group_id == event.id)
                .values(deleted_at=at)
            )
    await enqueue(
        session,
        kind=SYNC_TAGS,
        app_id=context.app_id,
        corp_id=context.corp_id,
        target=context.corp_id,
        event_id=context.event_id,
        idempotency_key=f"{SYNC_TAGS}:{context.event_id}",
    )


# messages -------------------------------------------------------------------------------


async def app_message(session: AsyncSession, event: ev.AppMessage, context: Context) -> None:
    content = event.content if isinstance(event, ev.TextMessage) else None
    payload = event.model_dump(by_alias=True)
    statement = insert(Message).values(
        corp_id=context.corp_id,
        app_id=context.app_id,
        event_id=context.event_id,
        source="app",
        msg_id=event.msg_id or f"event:{context.event_id}",
        sender=event.from_user,
        msg_type=event.msg_type,
        content=content,
        payload=payload,
        sent_at=event_time(event, context),
    )
    await session.execute(statement.on_conflict_do_nothing())


# members and departments ----------------------------------------------------------------


async def member_changed(session: AsyncSession, event: ev.MemberChange, context: Context) -> None:
    at = event_time(event, context)
    values: dict[str, Any] = {
        k: v
        for k, v in (
            ("name", event.name),
            ("department", event.department),
            ("position", event.position),
        )
        if v
    }
    values["deleted_at"] = at if isinstance(event, ev.DeleteUser) else None
    statement = insert(Member).values(
        corp_id=context.corp_id, userid=event.user_id, changed_at=at, **values
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["corp_id", "userid"],
            set_={**{k: statement.excluded[k] for k in values}, "changed_at": at},
            where=_not_older(statement, Member),
        )
    )
    if event.new_user_id and event.new_user_id != event.user_id:
        await session.execute(
            update(Member)
            .where(Member.corp_id == context.corp_id, Member.userid == event.user_id)
            .values(userid=event.new_user_id)
        )


async def department_changed(
    session: AsyncSession, event: ev.PartyChange, context: Context
) -> None:
    at = event_time(event, context)
    values: dict[str, Any] = {
        k: v for k, v in (("name", event.name), ("parent_id", event.parent_id)) if v
    }
    values["deleted_at"] = at if isinstance(event, ev.DeleteParty) else None
    statement = insert(Department).values(
        corp_id=context.corp_id, id=event.id, changed_at=at, **values
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["corp_id", "id"],
            set_={**{k: statement.excluded[k] for k in values}, "changed_at": at},
            where=_not_older(statement, Department),
        )
    )


Projector = Callable[[AsyncSession, Any, Context], Awaitable[None]]

# Most specific class first: AddHalfExternalContact is an AddExternalContact.
PROJECTORS: list[tuple[type[ev.WecomEvent], Projector]] = [
    (ev.AddExternalContact, added),
    (ev.EditExternalContact, edited),
    (ev.DelExternalContact, deleted_by_member),
    (ev.DelFollowUser, deleted_by_customer),
    (ev.ChatCreate, group_created),
    (ev.ChatUpdate, group_updated),
    (ev.ChatDismiss, group_dismissed),
    (ev.ExternalTagEvent, tag_changed),
    (ev.AppMessage, app_message),
    (ev.MemberChange, member_changed),
    (ev.PartyChange, department_changed),
]


async def project(session: AsyncSession, event: ev.WecomEvent, context: Context) -> None:
    """Apply event to the state. Events with no projector (app menu clicks, transfer_fail,
    unknown types) are kept in the event log only."""
    for event_class, projector in PROJECTORS:
        if isinstance(event, event_class):
            await projector(session, event, context)
            return
