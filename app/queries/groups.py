"""Customer groups (客户群) and their members."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ErrorCode, NotFound
from app.models import CustomerGroup, GroupMember, WecomApp
from app.queries import contains_pattern


@dataclass(frozen=True, slots=True)
class GroupFilters:
    corp_id: str | None = None
    owner: str | None = None
    q: str | None = None
    dismissed: bool | None = None


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    corp_id: str
    chat_id: str
    name: str | None
    owner: str | None
    notice: str | None
    created_at: datetime | None
    dismissed_at: datetime | None
    member_count: int  # members who have not quit
    enriched_at: datetime | None


@dataclass(frozen=True, slots=True)
class GroupMemberView:
    """member_type 1 is a corp member, 2 a customer; join_scene as WeCom said it."""

    member_id: str
    member_type: int | None
    name: str | None
    joined_at: datetime | None
    join_scene: int | None
    invitor: str | None
    quit_at: datetime | None
    state: str | None


@dataclass(frozen=True, slots=True)
class GroupDetail:
    group: Group
    members: tuple[GroupMemberView, ...]


# Computed only for the rows a slice returns: a scalar subquery in the select list runs after
# LIMIT, one primary key range (corp_id, chat_id, …) each.
_MEMBER_COUNT = (
    select(func.count())
    .where(
        GroupMember.corp_id == CustomerGroup.corp_id,
        GroupMember.chat_id == CustomerGroup.chat_id,
        GroupMember.quit_at.is_(None),
    )
    .correlate(CustomerGroup)
    .scalar_subquery()
)
_COLUMNS = (
    CustomerGroup.id,
    CustomerGroup.corp_id,
    CustomerGroup.chat_id,
    CustomerGroup.name,
    CustomerGroup.owner,
    CustomerGroup.notice,
    CustomerGroup.created_at,
    CustomerGroup.dismissed_at,
    _MEMBER_COUNT,
    CustomerGroup.enriched_at,
)


def _conditions(filters: GroupFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.corp_id is not None:
        conditions.append(CustomerGroup.corp_id == filters.corp_id)
    if filters.owner is not None:
        conditions.append(CustomerGroup.owner == filters.owner)
    if filters.q is not None:
        conditions.append(CustomerGroup.name.ilike(contains_pattern(filters.q), escape="\\"))
    if filters.dismissed is not None:
        dismissed_at = CustomerGroup.dismissed_at
        conditions.append(
            dismissed_at.is_not(None) if filters.dismissed else dismissed_at.is_(None)
        )
    return conditions


async def list_groups(
    session: AsyncSession, filters: GroupFilters, *, before_id: int | None, limit: int
) -> list[Group]:
    """At most `limit` groups with ids below `before_id`, newest first."""
    query = select(*_COLUMNS).where(*_conditions(filters))
    if before_id is not None:
        query = query.where(CustomerGroup.id < before_id)
    query = query.order_by(CustomerGroup.id.desc()).limit(limit)
    return [Group(*row) for row in (await session.execute(query))]


async def get_group(
    session: AsyncSession, chat_id: str, *, corp_id: str | None = None
) -> GroupDetail:
    """The group in `corp_id`; without it, the one first seen (lowest id) of any corp, as
    for customers. Members include those who quit (quit_at set), oldest first."""
    query = select(*_COLUMNS).where(CustomerGroup.chat_id == chat_id)
    if corp_id is not None:
        query = query.where(CustomerGroup.corp_id == corp_id)
    else:  # a primary key probe per corp, not a scan of every group
        query = query.where(CustomerGroup.corp_id.in_(select(WecomApp.corp_id).distinct()))
    row = (await session.execute(query.order_by(CustomerGroup.id).limit(1))).first()
    if row is None:
        raise NotFound(f"no customer group {chat_id!r}", code=ErrorCode.GROUP_NOT_FOUND)
    group = Group(*row)
    members = await session.execute(
        select(
            GroupMember.member_id,
            GroupMember.member_type,
            GroupMember.name,
            GroupMember.joined_at,
            GroupMember.join_scene,
            GroupMember.invitor,
            GroupMember.quit_at,
            GroupMember.state,
        )
        .where(GroupMember.corp_id == group.corp_id, GroupMember.chat_id == group.chat_id)
        .order_by(GroupMember.joined_at.asc().nulls_last(), GroupMember.member_id)
    )
    return GroupDetail(group, tuple(GroupMemberView(*m) for m in members))
