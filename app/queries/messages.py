"""Messages received: from members to an app, and from WeChat customers to 微信客服."""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Message, WecomApp

Source = Literal["app", "kf"]


@dataclass(frozen=True, slots=True)
class MessageFilters:
    """Times: since ≤ sent_at < until."""

    app_id: int | None = None
    source: Source | None = None
    sender: str | None = None
    open_kfid: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class MessageView:
    """`content` is the text of a text message (None for others); the raw payload stays in
    the event log."""

    id: int
    app: str
    source: str
    msg_id: str
    sender: str
    open_kfid: str | None
    msg_type: str
    content: str | None
    sent_at: datetime | None


def _conditions(filters: MessageFilters) -> list[ColumnElement[bool]]:
    """A sender is read through ix_messages_sender_id in the list's order; the rest are
    checked along the primary key, newest first."""
    conditions: list[ColumnElement[bool]] = []
    if filters.app_id is not None:
        conditions.append(Message.app_id == filters.app_id)
    if filters.source is not None:
        conditions.append(Message.source == filters.source)
    if filters.sender is not None:
        conditions.append(Message.sender == filters.sender)
    if filters.open_kfid is not None:
        conditions.append(Message.open_kfid == filters.open_kfid)
    if filters.since is not None:
        conditions.append(Message.sent_at >= filters.since)
    if filters.until is not None:
        conditions.append(Message.sent_at < filters.until)
    return conditions


async def list_messages(
    session: AsyncSession, filters: MessageFilters, *, before_id: int | None, limit: int
) -> list[MessageView]:
    """At most `limit` messages with ids below `before_id`, newest first."""
    query = (
        select(
            Message.id,
            WecomApp.slug,
            Message.source,
            Message.msg_id,
            Message.sender,
            Message.open_kfid,
            Message.msg_type,
            Message.content,
            Message.sent_at,
        )
        .join(WecomApp, WecomApp.id == Message.app_id)
        .where(*_conditions(filters))
    )
    if before_id is not None:
        query = query.where(Message.id < before_id)
    query = query.order_by(Message.id.desc()).limit(limit)
    return [MessageView(*row) for row in (await session.execute(query))]
