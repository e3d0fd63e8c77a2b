"""/api/v1/messages: messages received, by app, source, sender, 微信客服 account and time."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import HubDep, ReadKey
from app.api.pagination import DEFAULT_LIMIT, CursorParam, Instant, Limit, PageRequest
from app.api.schemas.messages import MessageOut, MessagePage
from app.queries import app_scope, before_id
from app.queries import messages as queries
from app.queries.messages import MessageFilters, Source

router = APIRouter(prefix="/messages", tags=["Messages"])


@router.get("", response_model=MessagePage)
async def list_messages(
    _: ReadKey,
    hub: HubDep,
    app: Annotated[
        str | None, Query(max_length=64, description="An app's slug: the messages it received.")
    ] = None,
    source: Annotated[
        Source | None, Query(description="app: members to the app; kf: customers to 微信客服.")
    ] = None,
    sender: Annotated[
        str | None, Query(max_length=128, description="A userid or an external_userid.")
    ] = None,
    open_kfid: Annotated[
        str | None, Query(max_length=128, description="A 微信客服 account.")
    ] = None,
    since: Annotated[Instant | None, Query(description="Sent at or after this.")] = None,
    until: Annotated[Instant | None, Query(description="Sent before this.")] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> MessagePage:
    """Newest first (the order wecom-hub stored them)."""
    page = PageRequest.of(
        limit,
        cursor,
        app=app,
        source=source,
        sender=sender,
        open_kfid=open_kfid,
        since=since,
        until=until,
    )
    before = before_id(page.after)
    async with hub.sessionmaker() as session:
        scope = await app_scope(session, app)
        filters = MessageFilters(
            app_id=scope.app_id if scope else None,
            source=source,
            sender=sender,
            open_kfid=open_kfid,
            since=since,
            until=until,
        )
        messages = await queries.list_messages(session, filters, before_id=before, limit=limit + 1)
    data, next_cursor = page.page(messages, key=lambda message: [message.id])
    return MessagePage(
        data=[MessageOut.model_validate(message) for message in data], next_cursor=next_cursor
    )
