"""Project one typed event into the customer state, inside the processor's transaction.

Every projection is an upsert, so it is idempotent; and every row that events change keeps
`changed_at`, the WeCom CreateTime of the last event applied to it. An event older than that
changes nothing: WeCom does not promise order, and a late add must not resurrect a customer
who has since deleted the member. Facts WeCom's callbacks do not carry (names, remarks, tags,
group members' details) are fetched by enrichment actions written here and run later, outside
the transaction.
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, func, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import ActionKind
from app.events import models as ev
from app.events.context import Context, event_time
from app.models import (
    CustomerGroup,
    CustomerStat,
    Department,
    ExternalContact,
    Follow,
    GroupMember,
    GroupStat,
    Member,
    Message,
    Tag,
    TagGroup,
)
from app.processing.writes import Prepared, defer, defer_enqueue, flush, prepare
from app.sql import insert_ignore, upsert

# The Core tables behind the models (statements below are Core: no ORM work per row).
_contacts: Table = ExternalContact.__table__  # type: ignore[assignment]
_follows: Table = Follow.__table__  # type: ignore[assignment]
_groups: Table = CustomerGroup.__table__  # type: ignore[assignment]
_members: Table = GroupMember.__table__  # type: ignore[assignment]
_messages: Table = Message.__table__  # type: ignore[assignment]
_members_table: Table = Member.__table__  # type: ignore[assignment]
_departments: Table = Department.__table__  # type: ignore[assignment]
_FOLLOW_KEY = ("corp_id", "userid", "external_userid")
_GROUP_KEY = ("corp_id", "chat_id")
_MEMBER_KEY = ("corp_id", "chat_id", "member_id")

_CONTACT_SEEN = prepare(
    upsert(
        _contacts,
        ("corp_id", "external_userid"),
        ("first_seen_at",),
        set_=lambda excluded: {
            "first_seen_at": func.least(
                func.coalesce(_contacts.c.first_seen_at, excluded.first_seen_at),
                excluded.first_seen_at,
            )
        },
    ),
    "external_contacts",
    ("corp_id", "external_userid"),
)
_FOLLOW_ADDED = prepare(
    upsert(_follows, _FOLLOW_KEY, ("status", "added_at", "state", "changed_at"), not_older=True),
    "follows",
    ("corp_id", "userid", "external_userid"),
)
_FOLLOW_DELETED_BY_MEMBER = prepare(
    upsert(
        _follows,
        _FOLLOW_KEY,
        ("status", "deleted_by_member_at", "delete_source", "changed_at"),
        not_older=True,
    ),
    "follows",
    ("corp_id", "userid", "external_userid"),
)
_FOLLOW_DELETED_BY_CUSTOMER = prepare(
    upsert(
        _follows, _FOLLOW_KEY, ("status", "deleted_by_customer_at", "changed_at"), not_older=True
    ),
    "follows",
    ("corp_id", "userid", "external_userid"),
)
_GROUP_TOUCHED = prepare(
    upsert(_groups, _GROUP_KEY, ("changed_at",), not_older=True),
    "customer_groups",
    ("corp_id", "chat_id"),
)
_GROUP_CREATED = prepare(
    upsert(_groups, _GROUP_KEY, ("created_at", "changed_at"), not_older=True),
    "customer_groups",
    ("corp_id", "chat_id"),
)
_GROUP_DISMISSED = prepare(
    upsert(_groups, _GROUP_KEY, ("dismissed_at", "changed_at"), not_older=True),
    "customer_groups",
    ("corp_id", "chat_id"),
)
_MEMBER_JOINED = prepare(
    upsert(
        _members,
        _MEMBER_KEY,
        ("joined_at", "join_scene", "quit_at", "quit_scene", "changed_at"),
        not_older=True,
    ),
    "group_members",
    ("corp_id", "chat_id", "member_id"),
)
_MEMBER_QUIT = prepare(
    upsert(_members, _MEMBER_KEY, ("quit_at", "quit_scene", "changed_at"), not_older=True),
    "group_members",
    ("corp_id", "chat_id", "member_id"),
)
_MESSAGE = prepare(
    insert_ignore(
        _messages,
        (
            "corp_id",
            "app_id",
            "event_id",
            "source",
            "msg_id",
            "sender",
            "msg_type",
            "content",
            "payload",
            "sent_at",
        ),
        ("corp_id", "source", "msg_id"),
    ),
    "messages",
    ("corp_id", "source", "msg_id"),
)


async def _enrich(session: AsyncSession, kind: ActionKind, target: str, context: Context) -> None:
    await defer_enqueue(
        session,
        kind=kind,
        app_id=context.app_id,
        corp_id=context.corp_id,
        target=target,
        event_id=context.event_id,
        idempotency_key=f"{kind}:{context.event_id}:{target}",
    )


async def _run(session: AsyncSession, statement: Prepared, params: dict[str, Any]) -> None:
    await defer(session, statement, params)


# customers ------------------------------------------------------------------------------


def _follow_key(event: ev.ExternalContactEvent, context: Context) -> dict[str, Any]:
    return {
        "corp_id": context.corp_id,
        "userid": event.user_id,
        "external_userid": event.external_user_id,
        "changed_at": event_time(event, context),
    }


async def _contact_seen(
    session: AsyncSession, event: ev.ExternalContactEvent, context: Context
) -> None:
    await _run(
        session,
        _CONTACT_SEEN,
        {
            "corp_id": context.corp_id,
            "external_userid": event.external_user_id,
            "first_seen_at": event_time(event, context),
        },
    )


async def added(session: AsyncSession, event: ev.AddExternalContact, context: Context) -> None:
    half = isinstance(event, ev.AddHalfExternalContact)
    await _contact_seen(session, event, context)
    await _run(
        session,
        _FOLLOW_ADDED,
        {
            **_follow_key(event, context),
            "status": "half" if half else "active",
            "added_at": event_time(event, context),
            "state": event.state or None,
        },
    )
    if not half:
        await _count_added(session, event, context)
    await _enrich(session, ActionKind.ENRICH_CONTACT, event.external_user_id, context)


async def edited(session: AsyncSession, event: ev.EditExternalContact, context: Context) -> None:
    await _contact_seen(session, event, context)
    await _enrich(session, ActionKind.ENRICH_CONTACT, event.external_user_id, context)


async def deleted_by_member(
    session: AsyncSession, event: ev.DelExternalContact, context: Context
) -> None:
    await _run(
        session,
        _FOLLOW_DELETED_BY_MEMBER,
        {
            **_follow_key(event, context),
            "status": "deleted_by_member",
            "deleted_by_member_at": event_time(event, context),
            "delete_source": event.source or None,
        },
    )
    if event.source != "DELETE_BY_TRANSFER":
        await _count_lost(session, event, context, churn=False)


async def deleted_by_customer(
    session: AsyncSession, event: ev.DelFollowUser, context: Context
) -> None:
    await _run(
        session,
        _FOLLOW_DELETED_BY_CUSTOMER,
        {
            **_follow_key(event, context),
            "status": "deleted_by_customer",
            "deleted_by_customer_at": event_time(event, context),
        },
    )
    await _count_lost(session, event, context, churn=True)


# customer groups ------------------------------------------------------------------------


def _group_key(event: ev.ExternalChatEvent, context: Context) -> dict[str, Any]:
    return {
        "corp_id": context.corp_id,
        "chat_id": event.chat_id,
        "changed_at": event_time(event, context),
    }


async def group_created(session: AsyncSession, event: ev.ChatCreate, context: Context) -> None:
    await _run(
        session,
        _GROUP_CREATED,
        {**_group_key(event, context), "created_at": event_time(event, context)},
    )
    await _enrich(session, ActionKind.ENRICH_GROUP, event.chat_id, context)


async def group_dismissed(session: AsyncSession, event: ev.ChatDismiss, context: Context) -> None:
    await _run(
        session,
        _GROUP_DISMISSED,
        {**_group_key(event, context), "dismissed_at": event_time(event, context)},
    )


async def group_updated(session: AsyncSession, event: ev.ChatUpdate, context: Context) -> None:
    at = event_time(event, context)
    await _run(session, _GROUP_TOUCHED, _group_key(event, context))
    await _count_group_change(session, event, context)
    if event.update_detail in ("add_member", "del_member") and event.mem_change_list:
        joined = event.update_detail == "add_member"
        statement = _MEMBER_JOINED if joined else _MEMBER_QUIT
        values = (
            {"joined_at": at, "join_scene": event.join_scene, "quit_at": None, "quit_scene": None}
            if joined
            else {"quit_at": at, "quit_scene": event.quit_scene}
        )
        for member in dict.fromkeys(event.mem_change_list):
            await _run(
                session,
                statement,
                {
                    "corp_id": context.corp_id,
                    "chat_id": event.chat_id,
                    "member_id": member,
                    "changed_at": at,
                    **values,
                },
            )
    await _enrich(session, ActionKind.ENRICH_GROUP, event.chat_id, context)


# tags -----------------------------------------------------------------------------------


async def tag_changed(session: AsyncSession, event: ev.ExternalTagEvent, context: Context) -> None:
    """WeCom says only which tag or group changed; the list itself is re-read (sync_tags).
    A deletion is applied at once, so a deleted tag disappears without waiting for it."""
    if isinstance(event, ev.TagDelete) and event.id:
        await flush(session)
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
    await defer_enqueue(
        session,
        kind=ActionKind.SYNC_TAGS,
        app_id=context.app_id,
        corp_id=context.corp_id,
        target=context.corp_id,
        event_id=context.event_id,
        idempotency_key=f"{ActionKind.SYNC_TAGS}:{context.event_id}",
    )


# messages -------------------------------------------------------------------------------


async def app_message(session: AsyncSession, event: ev.AppMessage, context: Context) -> None:
    await _run(
        session,
        _MESSAGE,
        {
            "corp_id": context.corp_id,
            "app_id": context.app_id,
            "event_id": context.event_id,
            "source": "app",
            "msg_id": event.msg_id or f"event:{context.event_id}",
            "sender": event.from_user,
            "msg_type": event.msg_type,
            "content": event.content if isinstance(event, ev.TextMessage) else None,
            "payload": event.model_dump(by_alias=True),
            "sent_at": event_time(event, context),
        },
    )


# members and departments ----------------------------------------------------------------


def _keep_unless_given(table: Any, *names: str) -> Callable[[Any], dict[str, Any]]:
    """change_contact pushes only the fields that changed: keep the others."""

    def updates(excluded: Any) -> dict[str, Any]:
        kept = {n: func.coalesce(excluded[n], table.c[n]) for n in names}
        return {**kept, "deleted_at": excluded.deleted_at, "changed_at": excluded.changed_at}

    return updates


_MEMBER = prepare(
    upsert(
        _members_table,
        ("corp_id", "userid"),
        ("name", "department", "position", "deleted_at", "changed_at"),
        set_=_keep_unless_given(_members_table, "name", "department", "position"),
        not_older=True,
    ),
    "members",
    ("corp_id", "userid"),
)
_DEPARTMENT = prepare(
    upsert(
        _departments,
        ("corp_id", "id"),
        ("name", "parent_id", "deleted_at", "changed_at"),
        set_=_keep_unless_given(_departments, "name", "parent_id"),
        not_older=True,
    ),
    "departments",
    ("corp_id", "id"),
)


async def upsert_member(
    session: AsyncSession,
    *,
    corp_id: str,
    userid: str,
    name: str | None,
    department: str | None,
    position: str | None,
    changed_at: datetime,
    deleted_at: datetime | None = None,
) -> None:
    """The members row as change_contact or `sync` (user/get) reports it: a field given as
    None keeps its value, and nothing applies over a row changed later than changed_at."""
    await _run(
        session,
        _MEMBER,
        {
            "corp_id": corp_id,
            "userid": userid,
            "name": name,
            "department": department,
            "position": position,
            "deleted_at": deleted_at,
            "changed_at": changed_at,
        },
    )


async def member_changed(session: AsyncSession, event: ev.MemberChange, context: Context) -> None:
    at = event_time(event, context)
    await upsert_member(
        session,
        corp_id=context.corp_id,
        userid=event.user_id,
        name=event.name or None,
        department=event.department or None,
        position=event.position or None,
        deleted_at=at if isinstance(event, ev.DeleteUser) else None,
        changed_at=at,
    )
    if event.new_user_id and event.new_user_id != event.user_id:
        await flush(session)  # the upsert above first
        await session.execute(
            update(Member)
            .where(Member.corp_id == context.corp_id, Member.userid == event.user_id)
            .values(userid=event.new_user_id)
        )


async def department_changed(
    session: AsyncSession, event: ev.PartyChange, context: Context
) -> None:
    at = event_time(event, context)
    await _run(
        session,
        _DEPARTMENT,
        {
            "corp_id": context.corp_id,
            "id": event.id,
            "name": event.name or None,
            "parent_id": event.parent_id or None,
            "deleted_at": at if isinstance(event, ev.DeleteParty) else None,
            "changed_at": at,
        },
    )


# statistics -----------------------------------------------------------------------------
# Counters per hour for app/queries/stats.py (tables: app/models/stats.py), added to in this
# transaction, so an event is counted exactly when it is projected: once, however often WeCom
# delivered it, and not at all if its projection rolls back.
#
# Not counted: a half add (add_half_external_contact: the member has not accepted yet; WeCom
# sends add_external_contact when they do, and that one counts), and a deletion by a transfer
# (Source=DELETE_BY_TRANSFER: the customer moved to another member, nobody dropped them).

_customer_stats: Table = CustomerStat.__table__  # type: ignore[assignment]
_group_stats: Table = GroupStat.__table__  # type: ignore[assignment]
_ADDED_COUNTED = prepare(
    upsert(
        _customer_stats,
        ("hour", "corp_id", "userid", "state"),
        ("added",),
        set_=lambda excluded: {"added": _customer_stats.c.added + excluded.added},
    ),
    "customer_stats",
    None,
)
# A churn or a deletion by the member counts under the channel of the add that brought that
# customer to that member: the latest add (or half add) in the corp's event history at or
# before it (by ix_events_external_userid), found in the same statement. The history rather
# than the follow: a re-add processed before an older deletion has already replaced the
# follow's state and added_at. With no add in the history (before wecom-hub): no channel.
_LOST_COUNTED = prepare(
    text(
        """
    INSERT INTO customer_stats AS s (hour, corp_id, userid, state, churned, deleted_by_member,
                                     churned_7d)
    SELECT CAST(:hour AS timestamptz), :corp_id, :userid, coalesce(brought.state, ''),
           CAST(:churned AS integer), 1 - CAST(:churned AS integer),
           CASE WHEN CAST(:churned AS integer) = 1
                     AND CAST(:at AS timestamptz) - brought.added_at < interval '7 days'
                THEN 1 ELSE 0 END
    FROM (VALUES (1)) AS one
    LEFT JOIN LATERAL (
        SELECT coalesce(e.create_time, e.received_at) AS added_at,
               e.payload ->> 'State' AS state
        FROM events e JOIN apps a ON a.id = e.app_id
        WHERE e.payload ? 'ExternalUserID' AND e.payload ->> 'ExternalUserID' = :external_userid
          AND e.payload ->> 'UserID' = :userid
          AND e.type IN ('add_external_contact', 'add_half_external_contact')
          AND a.corp_id = :corp_id
          AND coalesce(e.create_time, e.received_at) <= CAST(:at AS timestamptz)
        ORDER BY coalesce(e.create_time, e.received_at) DESC, e.id DESC
        LIMIT 1
    ) AS brought ON true
    ON CONFLICT (hour, corp_id, userid, state) DO UPDATE
    SET churned = s.churned + excluded.churned,
        deleted_by_member = s.deleted_by_member + excluded.deleted_by_member,
        churned_7d = s.churned_7d + excluded.churned_7d
    """
    ),
    "customer_stats",
    None,
)
_GROUP_COUNTED = prepare(
    upsert(
        _group_stats,
        ("hour", "corp_id", "chat_id", "change", "scene"),
        ("members",),
        set_=lambda excluded: {"members": _group_stats.c.members + excluded.members},
    ),
    "group_stats",
    None,
)


def _hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def _count_added(
    session: AsyncSession, event: ev.AddExternalContact, context: Context
) -> None:
    await _run(
        session,
        _ADDED_COUNTED,
        {
            "hour": _hour(event_time(event, context)),
            "corp_id": context.corp_id,
            "userid": event.user_id,
            "state": event.state,
            "added": 1,
        },
    )


async def _count_lost(
    session: AsyncSession, event: ev.ExternalContactEvent, context: Context, *, churn: bool
) -> None:
    """A churn (the customer deleted the member; churned_7d too if that add was less than
    7 days before) or a deletion by the member."""
    at = event_time(event, context)
    await _run(
        session,
        _LOST_COUNTED,
        {
            "hour": _hour(at),
            "corp_id": context.corp_id,
            "userid": event.user_id,
            "external_userid": event.external_user_id,
            "churned": int(churn),
            "at": at,
        },
    )


async def _count_group_change(
    session: AsyncSession, event: ev.ChatUpdate, context: Context
) -> None:
    """Members who joined or quit, by scene: MemChangeCnt, or else the members listed."""
    if event.update_detail == "add_member":
        change, scene = "join", event.join_scene
    elif event.update_detail == "del_member":
        change, scene = "quit", event.quit_scene
    else:
        return
    members = event.mem_change_cnt
    await _run(
        session,
        _GROUP_COUNTED,
        {
            "hour": _hour(event_time(event, context)),
            "corp_id": context.corp_id,
            "chat_id": event.chat_id,
            "change": change,
            "scene": -1 if scene is None else scene,
            "members": len(event.mem_change_list) if members is None else members,
        },
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
