"""Customers: who they are, which members they follow, and, for one of them, everything that
happened to them (the groups they are in, the events about them, the actions taken for them).

The detail answers "why did this customer get no welcome?" by itself: the welcome action in
its timeline carries its status, the reason and WeCom's error.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, Select, Text, exists, select, text, tuple_, type_coerce
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import status_sql
from app.errors import ErrorCode, NotFound
from app.models import CustomerGroup, ExternalContact, Follow, GroupMember, Tag, WecomApp
from app.queries import contains_pattern

# The API's words for a follow's status; "churned" is the domain's deleted_by_customer.
StatusFilter = Literal["active", "half", "churned", "deleted_by_member"]
_STATUS: dict[StatusFilter, str] = {
    "active": "active",
    "half": "half",
    "churned": "deleted_by_customer",
    "deleted_by_member": "deleted_by_member",
}

TIMELINE_MAX = 100


@dataclass(frozen=True, slots=True)
class CustomerFilters:
    """Every follow filter is about the same follow: `state="expo", status="churned"` finds
    customers who came through the expo channel and left that member, not customers who
    came through it and left someone else. Times: since ≤ added_at < until."""

    corp_id: str | None = None
    q: str | None = None
    tag: str | None = None
    state: str | None = None
    userid: str | None = None
    status: StatusFilter | None = None
    added_since: datetime | None = None
    added_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    corp_id: str
    external_userid: str
    name: str | None
    type: int | None
    gender: int | None
    corp_name: str | None
    unionid: str | None
    first_seen_at: datetime | None
    enriched_at: datetime | None

    @classmethod
    def of(cls, row: ExternalContact) -> "Customer":
        return cls(
            id=row.id,
            corp_id=row.corp_id,
            external_userid=row.external_userid,
            name=row.name,
            type=row.type,
            gender=row.gender,
            corp_name=row.corp_name,
            unionid=row.unionid,
            first_seen_at=row.first_seen_at,
            enriched_at=row.enriched_at,
        )


@dataclass(frozen=True, slots=True)
class FollowView:
    userid: str
    status: str
    added_at: datetime | None
    add_way: int | None
    state: str | None
    remark: str | None
    tag_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CustomerItem:
    customer: Customer
    follows: tuple[FollowView, ...]


@dataclass(frozen=True, slots=True)
class TagRef:
    tag_id: str
    name: str | None  # None: a tag the corp's tag list does not know (yet)


@dataclass(frozen=True, slots=True)
class FollowDetail:
    userid: str
    status: str
    added_at: datetime | None
    add_way: int | None
    state: str | None
    remark: str | None
    description: str | None
    tags: tuple[TagRef, ...]
    deleted_by_customer_at: datetime | None
    deleted_by_member_at: datetime | None
    delete_source: str | None


@dataclass(frozen=True, slots=True)
class Membership:
    chat_id: str
    name: str | None
    joined_at: datetime | None
    join_scene: int | None
    quit_at: datetime | None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """An event about the customer or an action taken for them. `type` is the event's type
    (`add_external_contact`) or the action's kind (`welcome`); `summary` says who and which
    channel for an event; `reason` is why an action ended as it did, or why an event failed;
    `error_code`/`error_message` are the action's last error (WeCom's errcode and errmsg)."""

    at: datetime
    kind: Literal["event", "action"]
    id: int
    type: str
    status: str
    summary: str | None
    reason: str | None
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class CustomerDetail:
    customer: Customer
    follows: tuple[FollowDetail, ...]
    groups: tuple[Membership, ...]
    timeline: tuple[TimelineEntry, ...]


def _follow_conditions(filters: CustomerFilters) -> list[ColumnElement[bool]]:
    """Written so Postgres may start from the follows when they are few: the tag as
    `tag_ids @> ARRAY[tag]` (GIN ix_follows_tag_ids; `tag = ANY(tag_ids)` could not use it),
    the state by ix_follows_state. Otherwise it walks customers newest first and checks each
    one's few follows through ix_follows_customer, stopping at the page's end."""
    conditions: list[ColumnElement[bool]] = []
    if filters.tag is not None:
        # The model's ARRAY is the generic one, which has no @>; Postgres's has.
        tag_ids = type_coerce(Follow.tag_ids, postgresql.ARRAY(Text))
        conditions.append(tag_ids.contains([filters.tag]))
    if filters.state is not None:
        conditions.append(Follow.state == filters.state)
    if filters.userid is not None:
        conditions.append(Follow.userid == filters.userid)
    if filters.status is not None:
        conditions.append(Follow.status == _STATUS[filters.status])
    if filters.added_since is not None:
        conditions.append(Follow.added_at >= filters.added_since)
    if filters.added_until is not None:
        conditions.append(Follow.added_at < filters.added_until)
    return conditions


def _customers_query(filters: CustomerFilters) -> Select[ExternalContact]:
    query = select(ExternalContact)
    if filters.corp_id is not None:
        query = query.where(ExternalContact.corp_id == filters.corp_id)
    if filters.q is not None:
        query = query.where(ExternalContact.name.ilike(contains_pattern(filters.q), escape="\\"))
    if conditions := _follow_conditions(filters):
        # One EXISTS, so that all of them hold for one follow; found by ix_follows_customer.
        query = query.where(
            exists().where(
                Follow.corp_id == ExternalContact.corp_id,
                Follow.external_userid == ExternalContact.external_userid,
                *conditions,
            )
        )
    return query


async def list_customers(
    session: AsyncSession, filters: CustomerFilters, *, before_id: int | None, limit: int
) -> list[CustomerItem]:
    """At most `limit` customers with ids below `before_id`, newest first, each with all of
    their follows (fetched for the whole slice in one query)."""
    query = _customers_query(filters)
    if before_id is not None:
        query = query.where(ExternalContact.id < before_id)
    query = query.order_by(ExternalContact.id.desc()).limit(limit)
    customers = [Customer.of(row) for row in await session.scalars(query)]
    follows = await _follows_of(session, [(c.corp_id, c.external_userid) for c in customers])
    return [
        CustomerItem(c, tuple(follows.get((c.corp_id, c.external_userid), ()))) for c in customers
    ]


async def _follows_of(
    session: AsyncSession, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[FollowView]]:
    if not keys:
        return {}
    query = (
        select(Follow)
        .where(tuple_(Follow.corp_id, Follow.external_userid).in_(keys))
        .order_by(Follow.added_at.desc().nulls_last(), Follow.userid)
    )
    found: dict[tuple[str, str], list[FollowView]] = {}
    for row in await session.scalars(query):
        found.setdefault((row.corp_id, row.external_userid), []).append(
            FollowView(
                userid=row.userid,
                status=row.status,
                added_at=row.added_at,
                add_way=row.add_way,
                state=row.state,
                remark=row.remark,
                tag_ids=tuple(row.tag_ids),
            )
        )
    return found


async def get_customer(
    session: AsyncSession, external_userid: str, *, corp_id: str | None = None
) -> CustomerDetail:
    """The customer in `corp_id`; without it, in any corp. An external_userid is only unique
    within a corp: if two corps know the same one (the same WeCom user seen by corps that
    share a service provider), the one first seen here (lowest id) is answered, and passing
    the corp picks the other."""
    query = select(ExternalContact).where(ExternalContact.external_userid == external_userid)
    if corp_id is not None:
        query = query.where(ExternalContact.corp_id == corp_id)
    else:
        # The key is (corp_id, external_userid): naming the corps there are (a handful)
        # makes this a primary key probe per corp instead of a scan of every customer.
        query = query.where(ExternalContact.corp_id.in_(select(WecomApp.corp_id).distinct()))
    row = (await session.scalars(query.order_by(ExternalContact.id).limit(1))).first()
    if row is None:
        raise NotFound(f"no customer {external_userid!r}", code=ErrorCode.CUSTOMER_NOT_FOUND)
    customer = Customer.of(row)
    return CustomerDetail(
        customer=customer,
        follows=await _follow_details(session, customer),
        groups=await _memberships(session, customer),
        timeline=await _timeline(session, customer),
    )


async def _follow_details(session: AsyncSession, customer: Customer) -> tuple[FollowDetail, ...]:
    follows = list(
        await session.scalars(
            select(Follow)
            .where(
                Follow.corp_id == customer.corp_id,
                Follow.external_userid == customer.external_userid,
            )
            .order_by(Follow.added_at.desc().nulls_last(), Follow.userid)
        )
    )
    tag_ids = {tag_id for follow in follows for tag_id in follow.tag_ids}
    names: dict[str, str | None] = {}
    if tag_ids:
        rows = await session.execute(
            select(Tag.tag_id, Tag.name).where(
                Tag.corp_id == customer.corp_id, Tag.tag_id.in_(tag_ids)
            )
        )
        names = {tag_id: name for tag_id, name in rows}
    return tuple(
        FollowDetail(
            userid=follow.userid,
            status=follow.status,
            added_at=follow.added_at,
            add_way=follow.add_way,
            state=follow.state,
            remark=follow.remark,
            description=follow.description,
            tags=tuple(TagRef(tag_id, names.get(tag_id)) for tag_id in follow.tag_ids),
            deleted_by_customer_at=follow.deleted_by_customer_at,
            deleted_by_member_at=follow.deleted_by_member_at,
            delete_source=follow.delete_source,
        )
        for follow in follows
    )


async def _memberships(session: AsyncSession, customer: Customer) -> tuple[Membership, ...]:
    query = (
        select(
            GroupMember.chat_id,
            CustomerGroup.name,
            GroupMember.joined_at,
            GroupMember.join_scene,
            GroupMember.quit_at,
        )
        .outerjoin(
            CustomerGroup,
            (CustomerGroup.corp_id == GroupMember.corp_id)
            & (CustomerGroup.chat_id == GroupMember.chat_id),
        )
        .where(
            GroupMember.corp_id == customer.corp_id,
            GroupMember.member_id == customer.external_userid,
        )
        .order_by(GroupMember.joined_at.desc().nulls_last(), GroupMember.chat_id)
    )
    return tuple(Membership(*row) for row in (await session.execute(query)))


# Each half is written for its index, newest first: events by ix_events_external_userid
# (the expression and the partial index's `?` predicate spelled as the index spells them, as
# literals, or Postgres cannot match them), actions by ix_actions_target_id. At is when
# wecom-hub received the event or created the action: one clock for both.
_TIMELINE = text(
    f"""
    (SELECT e.received_at AS at, 'event' AS kind, e.id, e.type, e.status,
            e.payload ->> 'UserID' AS userid, e.payload ->> 'State' AS state,
            e.error AS reason, NULL AS error_code, NULL AS error_message
     FROM events e
     WHERE e.payload ? 'ExternalUserID' AND e.payload ->> 'ExternalUserID' = :external_userid
       AND e.app_id IN (SELECT id FROM apps WHERE corp_id = :corp_id)
     ORDER BY e.id DESC LIMIT :limit)
    UNION ALL
    (SELECT x.created_at, 'action', x.id, x.kind, {status_sql("x")}, NULL, NULL,
            x.reason, x.error_code, x.error_message
     FROM actions x
     WHERE x.target = :external_userid AND x.corp_id = :corp_id
     ORDER BY x.id DESC LIMIT :limit)
    ORDER BY at DESC, kind, id DESC
    LIMIT :limit
    """  # noqa: S608 - a constant fragment
)


def _summary(userid: str | None, state: str | None) -> str | None:
    parts = [f"member {userid}"] if userid else []
    if state:
        parts.append(f"channel state {state}")
    return ", ".join(parts) or None


async def _timeline(session: AsyncSession, customer: Customer) -> tuple[TimelineEntry, ...]:
    """The newest TIMELINE_MAX events and actions of the customer, newest first; at the same
    instant an action sorts before the event that caused it."""
    rows = await session.execute(
        _TIMELINE,
        {
            "external_userid": customer.external_userid,
            "corp_id": customer.corp_id,
            "limit": TIMELINE_MAX,
        },
    )
    return tuple(
        TimelineEntry(
            at=row.at,
            kind=row.kind,
            id=row.id,
            type=row.type,
            status=row.status,
            summary=_summary(row.userid, row.state),
            reason=row.reason,
            error_code=row.error_code,
            error_message=row.error_message,
        )
        for row in rows
    )
