"""/api/v1/events: the event log, newest first, and one event with what it caused."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from app.api.deps import HubDep, ReadKey
from app.api.pagination import CursorParam, Instant, Limit, PageRequest, RowId
from app.api.schemas.actions import ActionOut
from app.api.schemas.events import EventDetailOut, EventOut, EventPage
from app.queries import app_scope, before_id
from app.queries.events import EventFilters, get_event, list_events

router = APIRouter(prefix="/events", tags=["events"])


@router.get("", response_model=EventPage)
async def events(
    _: ReadKey,
    hub: HubDep,
    app: Annotated[str | None, Query(description="An app's slug.")] = None,
    family: Annotated[str | None, Query(examples=["change_external_contact"])] = None,
    type: Annotated[str | None, Query(examples=["add_external_contact"])] = None,
    status: Literal["pending", "processed", "failed"] | None = None,
    external_userid: str | None = None,
    chat_id: str | None = None,
    since: Annotated[Instant | None, Query(description="Received at or after.")] = None,
    until: Annotated[Instant | None, Query(description="Received before.")] = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> EventPage:
    page = PageRequest.of(
        limit,
        cursor,
        app=app,
        family=family,
        type=type,
        status=status,
        external_userid=external_userid,
        chat_id=chat_id,
        since=since,
        until=until,
    )
    async with hub.sessionmaker() as session:
        scope = await app_scope(session, app)
        filters = EventFilters(
            app_id=scope.app_id if scope else None,
            family=family,
            type=type,
            status=status,
            external_userid=external_userid,
            chat_id=chat_id,
            since=since,
            until=until,
        )
        rows = await list_events(session, filters, before_id=before_id(page.after), limit=limit + 1)
    kept, next_cursor = page.page(rows, key=lambda row: [row.id])
    return EventPage(data=[EventOut.model_validate(row) for row in kept], next_cursor=next_cursor)


@router.get("/{event_id}", response_model=EventDetailOut)
async def event(event_id: RowId, _: ReadKey, hub: HubDep) -> EventDetailOut:
    async with hub.sessionmaker() as session:
        detail = await get_event(session, event_id)
    return EventDetailOut.model_validate(
        {
            **EventOut.model_validate(detail.event).model_dump(),
            "fields": detail.fields,
            "dedup_key": detail.dedup_key,
            "actions": [ActionOut.of(action) for action in detail.actions],
        }
    )
