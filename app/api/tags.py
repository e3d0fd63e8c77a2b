"""/api/v1/tags: the corps' customer tags, by corp and tag group."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import HubDep, ReadKey
from app.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, PageRequest
from app.api.schemas.tags import TagOut, TagPage
from app.queries import app_scope, keyset
from app.queries import tags as queries
from app.queries.tags import TagFilters

router = APIRouter(prefix="/tags", tags=["Tags"])


@router.get("", response_model=TagPage)
async def list_tags(
    _: ReadKey,
    hub: HubDep,
    app: Annotated[
        str | None, Query(max_length=64, description="An app's slug: its corp's tags only.")
    ] = None,
    group_id: Annotated[str | None, Query(max_length=128, description="A tag group's id.")] = None,
    include_deleted: Annotated[
        bool, Query(description="Also tags deleted in WeCom (deleted_at set).")
    ] = False,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> TagPage:
    """In descending (corp_id, tag_id) order: WeCom's tag ids carry no time, so there is no
    newest first; the order is stable and every tag is listed once."""
    page = PageRequest.of(
        limit, cursor, app=app, group_id=group_id, include_deleted=include_deleted
    )
    before = keyset(page.after, str, str)
    async with hub.sessionmaker() as session:
        scope = await app_scope(session, app)
        filters = TagFilters(
            corp_id=scope.corp_id if scope else None,
            group_id=group_id,
            include_deleted=include_deleted,
        )
        tags = await queries.list_tags(
            session,
            filters,
            before=(before[0], before[1]) if before else None,
            limit=limit + 1,
        )
    data, next_cursor = page.page(tags, key=lambda tag: [tag.corp_id, tag.tag_id])
    return TagPage(data=[TagOut.model_validate(tag) for tag in data], next_cursor=next_cursor)
