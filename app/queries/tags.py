"""The corps' customer tags (企业标签), with the name of their tag group."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Tag, TagGroup


@dataclass(frozen=True, slots=True)
class TagFilters:
    corp_id: str | None = None
    group_id: str | None = None
    include_deleted: bool = False


@dataclass(frozen=True, slots=True)
class TagView:
    corp_id: str
    tag_id: str
    name: str | None
    group_id: str | None
    group_name: str | None
    order: int | None
    created_at: datetime | None
    deleted_at: datetime | None


def _conditions(filters: TagFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.corp_id is not None:
        conditions.append(Tag.corp_id == filters.corp_id)
    if filters.group_id is not None:
        conditions.append(Tag.group_id == filters.group_id)
    if not filters.include_deleted:
        conditions.append(Tag.deleted_at.is_(None))
    return conditions


async def list_tags(
    session: AsyncSession,
    filters: TagFilters,
    *,
    before: tuple[str, str] | None,
    limit: int,
) -> list[TagView]:
    """At most `limit` tags whose (corp_id, tag_id) sorts below `before`, in descending
    (corp_id, tag_id) order. Tags have no arrival order of their own (WeCom's ids are
    strings): the primary key, compared as a row, is the one order an index gives for free."""
    query = (
        select(
            Tag.corp_id,
            Tag.tag_id,
            Tag.name,
            Tag.group_id,
            TagGroup.name,
            Tag.order,
            Tag.created_at,
            Tag.deleted_at,
        )
        .outerjoin(
            TagGroup, (TagGroup.corp_id == Tag.corp_id) & (TagGroup.group_id == Tag.group_id)
        )
        .where(*_conditions(filters))
    )
    if before is not None:
        query = query.where(tuple_(Tag.corp_id, Tag.tag_id) < tuple_(*before))
    query = query.order_by(Tag.corp_id.desc(), Tag.tag_id.desc()).limit(limit)
    return [TagView(*row) for row in (await session.execute(query))]
