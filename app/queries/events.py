"""The event log, newest first: filtered lists (keyset pages) and one event with the
actions it caused."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ErrorCode, NotFound
from app.queries import keyset_page_sql
from app.queries.actions import ActionSummary, actions_of_event


@dataclass(frozen=True, slots=True)
class EventFilters:
    app_id: int | None = None
    family: str | None = None
    type: str | None = None
    status: str | None = None
    external_userid: str | None = None
    chat_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    app: str
    received_at: datetime
    create_time: datetime | None
    family: str
    type: str
    msg_id: str | None
    external_userid: str | None
    chat_id: str | None
    status: str
    attempts: int
    processed_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class EventDetail:
    event: EventRow
    fields: dict[str, Any]
    dedup_key: str
    actions: list[ActionSummary]


_COLUMNS = """
    e.id, a.slug AS app, e.received_at, e.create_time, e.family, e.type, e.msg_id,
    e.payload ->> 'ExternalUserID' AS external_userid, e.payload ->> 'ChatId' AS chat_id,
    e.status, e.attempts, e.processed_at, e.error
"""

# Each filter is written so that one of the events indexes (migration 0009) serves it in the
# list's order: `(column, id)` ranges, read backwards from the cursor.
_FILTERS = {
    "app_id": "e.app_id = :app_id",
    "family": "e.family = :family",
    "type": "e.type = :type",
    "status": "e.status = :status",
    "external_userid": "e.payload ? 'ExternalUserID'"
    " AND e.payload ->> 'ExternalUserID' = :external_userid",
    "chat_id": "e.payload ? 'ChatId' AND e.payload ->> 'ChatId' = :chat_id",
    "since": "e.received_at >= :since",
    # ids grow with received_at, within the seconds an insert may take: every event received
    # a minute or more after `until` has a higher id than every event received before it. So
    # the scan starts there instead of walking down from the newest event (600 ms at 1M).
    "until": "e.received_at < :until AND e.id < coalesce((SELECT id FROM events"
    " WHERE received_at >= CAST(:until AS timestamptz) + interval '1 minute'"
    " ORDER BY received_at LIMIT 1), 9223372036854775807)",
}


async def list_events(
    session: AsyncSession, filters: EventFilters, *, before_id: int | None, limit: int
) -> list[EventRow]:
    """At most `limit` events with ids below `before_id` (None: from the newest)."""
    query, params = keyset_page_sql(
        f"SELECT {_COLUMNS} FROM events e JOIN apps a ON a.id = e.app_id",  # noqa: S608
        id_column="e.id",
        conditions=_FILTERS,
        filters=filters,
        before_id=before_id,
        limit=limit,
    )
    rows = await session.execute(text(query), params)
    return [EventRow(**row._mapping) for row in rows]


async def get_event(session: AsyncSession, event_id: int) -> EventDetail:
    row = (
        await session.execute(
            text(
                f"SELECT {_COLUMNS}, e.payload, e.dedup_key"  # noqa: S608 - fixed columns
                " FROM events e JOIN apps a ON a.id = e.app_id WHERE e.id = :id"
            ),
            {"id": event_id},
        )
    ).first()
    if row is None:
        raise NotFound(f"no event {event_id}", code=ErrorCode.EVENT_NOT_FOUND)
    values = dict(row._mapping)
    fields, dedup_key = values.pop("payload"), values.pop("dedup_key")
    return EventDetail(
        EventRow(**values), fields, dedup_key, await actions_of_event(session, event_id)
    )
