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

from sqlalchemy import Table, func, update
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
from app.processing.writes import (
    Prepared,
    Repeats,
    defer,
    defer_enqueue,
    flush,
    prepare,
    prepare_sql,
)
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
    repeats=Repeats.COMBINE,
    combine={"first_seen_at": "min"},
)
_FOLLOW_ADDED = prepare(
    upsert(_follows, _FOLLOW_KEY, ("status", "added_at", "state", "changed_at"), not_older=True),
    "follows",
    ("corp_id", "userid", "external_userid"),
    repeats=Repeats.NEWEST,
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
    repeats=Repeats.NEWEST,
)
_FOLLOW_DELETED_BY_CUSTOMER = prepare(
    upsert(
        _follows, _FOLLOW_KEY, ("status", "deleted_by_customer_at", "changed_at"), not_older=True
    ),
    "follows",
    ("corp_id", "userid", "external_userid"),
    repeats=Repeats.NEWEST,
)
_GROUP_TOUCHED = prepare(
    upsert(_groups, _GROUP_KEY, ("changed_at",), not_older=True),
    "customer_groups",
    ("corp_id", "chat_id"),
    repeats=Repeats.NEWEST,
    last=True,  # a group's row: every join and quit touches it
)
_GROUP_CREATED = prepare(
    upsert(_groups, _GROUP_KEY, ("created_at", "changed_at"), not_older=True),
    "customer_groups",
    ("corp_id", "chat_id"),
    repeats=Repeats.NEWEST,
    last=True,  # a group's row: every join and quit touches it
)
_GROUP_DISMISSED = prepare(
    upsert(_groups, _GROUP_KEY, ("dismissed_at", "changed_at"), not_older=True),
    "customer_groups",
    ("corp_id", "chat_id"),
    repeats=Repeats.NEWEST,
    last=True,  # a group's row: every join and quit touches it
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
    repeats=Repeats.NEWEST,
)
_MEMBER_QUIT = prepare(
    upsert(_members, _MEMBER_KEY, ("quit_at", "quit_scene", "changed_at"), not_older=True),
    "group_members",
    ("corp_id", "chat_id", "member_id"),
    repeats=Repeats.NEWEST,
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


def _follow_key(event: ev.ExternalContactEvent, context: Context, at: datetime) -> dict[str, Any]:
    return {
        "corp_id": context.corp_id,
        "userid": event.user_id,
        "external_userid": event.external_user_id,
        "changed_at": at,
    }


async def _contact_seen(
    session: AsyncSession, event: ev.ExternalContactEvent, context: Context, at: datetime
) -> None:
    await _run(
        session,
        _CONTACT_SEEN,
        {
            "corp_id": context.corp_id,
            "external_userid": event.external_user_id,
            "first_seen_at": at,
        },
    )


async def added(session: AsyncSession, event: ev.AddExternalContact, context: Context) -> None:
    half = isinstance(event, ev.AddHalfExternalContact)
    at = event_time(event, context)
    await _contact_seen(session, event, context, at)
    await _run(
        session,
        _FOLLOW_ADDED,
        {
            **_follow_key(event, context, at),
            "status": "half" if half else "active",
            "added_at": at,
            "state": event.state or None,
        },
    )
    if not half:
        await _count_added(session, event, context, at)
    await _enrich(session, ActionKind.ENRICH_CONTACT, event.external_user_id, context)


async def edited(session: AsyncSession, event: ev.EditExternalContact, context: Context) -> None:
    await _contact_seen(session, event, context, event_time(event, context))
    await _enrich(session, ActionKind.ENRICH_CONTACT, event.external_user_id, context)


async def deleted_by_member(
    session: AsyncSession, event: ev.DelExternalContact, context: Context
) -> None:
    at = event_time(event, context)
    await _run(
        session,
        _FOLLOW_DELETED_BY_MEMBER,
        {
            **_follow_key(event, context, at),
            "status": "deleted_by_member",
            "deleted_by_member_at": at,
            "delete_source": event.source or None,
        },
    )
    if event.source != "DELETE_BY_TRANSFER":
        await _count_lost(session, event, context, at, churn=False)


async def deleted_by_customer(
    session: AsyncSession, event: ev.DelFollowUser, context: Context
) -> None:
    at = event_time(event, context)
    await _run(
        session,
        _FOLLOW_DELETED_BY_CUSTOMER,
        {
            **_follow_key(event, context, at),
            "status": "deleted_by_customer",
            "deleted_by_customer_at": at,
        },
    )
    await _count_lost(session, event, context, at, churn=True)


# customer groups ------------------------------------------------------------------------


def _group_key(event: ev.ExternalChatEvent, context: Context, at: datetime) -> dict[str, Any]:
    return {"corp_id": context.corp_id, "chat_id": event.chat_id, "changed_at": at}


async def group_created(session: AsyncSession, event: ev.ChatCreate, context: Context) -> None:
    at = event_time(event, context)
    await _run(session, _GROUP_CREATED, {**_group_key(event, context, at), "created_at": at})
    await _enrich(session, ActionKind.ENRICH_GROUP, event.chat_id, context)


async def group_dismissed(session: AsyncSession, event: ev.ChatDismiss, context: Context) -> None:
    at = event_time(event, context)
    await _run(session, _GROUP_DISMISSED, {**_group_key(event, context, at), "dismissed_at": at})


async def group_updated(session: AsyncSession, event: ev.ChatUpdate, context: Context) -> None:
    at = event_time(event, context)
    await _run(session, _GROUP_TOUCHED, _group_key(event, context, at))
    await _count_group_change(session, event, context, at)
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
    repeats=Repeats.SPLIT,  # coalesce keeps fields an earlier row gave: each in turn
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
    repeats=Repeats.SPLIT,  # coalesce keeps fields an earlier row gave: each in turn
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
    ("hour", "corp_id", "userid", "state"),
    repeats=Repeats.COMBINE,
    combine={"added": "sum"},
    last=True,  # counters: many events add to one row
)
# A churn or a deletion by the member counts under the channel of the add that brought that
# customer to that member: the latest add (or half add) in the corp's event history at or
# before it (by ix_events_external_userid), found in the same statement. The history rather
# than the follow: a re-add processed before an older deletion has already replaced the
# follow's state and added_at. With no add in the history (before wecom-hub): no channel.
# For a batch (app/processing/writes.py): the batch's departures that land on one counter
# row are added up before they are written.
_LOST_COUNTED = prepare_sql(
    """
    INSERT INTO customer_stats AS s (hour, corp_id, userid, state, churned, deleted_by_member,
                                     churned_7d)
    SELECT u.hour, u.corp_id, u.userid, coalesce(brought.state, ''),
           sum(u.churned), sum(1 - u.churned),
           sum(CASE WHEN u.churned = 1 AND u.at - brought.added_at < interval '7 days'
                    THEN 1 ELSE 0 END)
    FROM {rows}
    LEFT JOIN LATERAL (
        SELECT coalesce(e.create_time, e.received_at) AS added_at,
               e.payload ->> 'State' AS state
        FROM events e JOIN apps a ON a.id = e.app_id
        WHERE e.payload ? 'ExternalUserID' AND e.payload ->> 'ExternalUserID' = u.external_userid
          AND e.payload ->> 'UserID' = u.userid
          AND e.type IN ('add_external_contact', 'add_half_external_contact')
          AND a.corp_id = u.corp_id
          AND coalesce(e.create_time, e.received_at) <= u.at
        ORDER BY coalesce(e.create_time, e.received_at) DESC, e.id DESC
        LIMIT 1
    ) AS brought ON true
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (hour, corp_id, userid, state) DO UPDATE
    SET churned = s.churned + excluded.churned,
        deleted_by_member = s.deleted_by_member + excluded.deleted_by_member,
        churned_7d = s.churned_7d + excluded.churned_7d
    """,
    (
        ("hour", "timestamptz"),
        ("corp_id", "text"),
        ("userid", "text"),
        ("external_userid", "text"),
        ("churned", "integer"),
        ("at", "timestamptz"),
    ),
    "customer_stats",
    None,
    last=True,
)
_GROUP_COUNTED = prepare(
    upsert(
        _group_stats,
        ("hour", "corp_id", "chat_id", "change", "scene"),
        ("members",),
        set_=lambda excluded: {"members": _group_stats.c.members + excluded.members},
    ),
    "group_stats",
    ("hour", "corp_id", "chat_id", "change", "scene"),
    repeats=Repeats.COMBINE,
    combine={"members": "sum"},
    last=True,
)


def _hour(at: datetime) -> datetime:
    if at.tzinfo is not UTC:  # event_time's and asyncpg's datetimes are UTC already
        at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


async def _count_added(
    session: AsyncSession, event: ev.AddExternalContact, context: Context, at: datetime
) -> None:
    await _run(
        session,
        _ADDED_COUNTED,
        {
            "hour": _hour(at),
            "corp_id": context.corp_id,
            "userid": event.user_id,
            "state": event.state,
            "added": 1,
        },
    )


async def _count_lost(
    session: AsyncSession,
    event: ev.ExternalContactEvent,
    context: Context,
    at: datetime,
    *,
    churn: bool,
) -> None:
    """A churn (the customer deleted the member; churned_7d too if that add was less than
    7 days before) or a deletion by the member."""
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
    session: AsyncSession, event: ev.ChatUpdate, context: Context, at: datetime
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
            "hour": _hour(at),
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


# Event class → its projector (None: none), found once per class: isinstance over the list
# per event cost more than the projection's own Python (pydantic classes check through
# ABCMeta).
_PROJECTOR_OF: dict[type[ev.WecomEvent], Projector | None] = {}


def _projector_of(event_class: type[ev.WecomEvent]) -> Projector | None:
    if event_class not in _PROJECTOR_OF:
        _PROJECTOR_OF[event_class] = next(
            (projector for base, projector in PROJECTORS if issubclass(event_class, base)), None
        )
    return _PROJECTOR_OF[event_class]


async def project(session: AsyncSession, event: ev.WecomEvent, context: Context) -> None:
    """Apply event to the state. Events with no projector (app menu clicks, transfer_fail,
    unknown types) are kept in the event log only."""
    projector = _projector_of(type(event))
    if projector is not None:
        await projector(session, event, context)
