"""/api/v1/groups: customer groups, filtered by corp, owner, name and whether dismissed; one
group with its members."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.deps import HubDep, ReadKey
from app.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, PageRequest
from app.api.schemas.groups import GroupDetailOut, GroupOut, GroupPage
from app.queries import app_scope, before_id
from app.queries import groups as queries
from app.queries.groups import GroupFilters

router = APIRouter(prefix="/groups", tags=["Customer groups"])


@router.get("", response_model=GroupPage)
async def list_groups(
    _: ReadKey,
    hub: HubDep,
    app: Annotated[
        str | None, Query(max_length=64, description="An app's slug: its corp's groups only.")
    ] = None,
    owner: Annotated[str | None, Query(max_length=128, description="The owner's userid.")] = None,
    q: Annotated[
        str | None, Query(min_length=1, max_length=100, description="Name contains (any case).")
    ] = None,
    dismissed: Annotated[
        bool | None, Query(description="true: dismissed groups only; false: live ones only.")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> GroupPage:
    """Newest first (the order wecom-hub first saw them)."""
    page = PageRequest.of(limit, cursor, app=app, owner=owner, q=q, dismissed=dismissed)
    before = before_id(page.after)
    async with hub.sessionmaker() as session:
        scope = await app_scope(session, app)
        filters = GroupFilters(
            corp_id=scope.corp_id if scope else None, owner=owner, q=q, dismissed=dismissed
        )
        groups = await queries.list_groups(session, filters, before_id=before, limit=limit + 1)
    data, next_cursor = page.page(groups, key=lambda group: [group.id])
    return GroupPage(
        data=[GroupOut.model_validate(group) for group in data], next_cursor=next_cursor
    )


@router.get("/{chat_id}", response_model=GroupDetailOut)
async def get_group(
    chat_id: Annotated[str, Path(max_length=128)],
    _: ReadKey,
    hub: HubDep,
    app: Annotated[
        str | None,
        Query(
            max_length=64,
            description="An app's slug, to pick its corp's group. Without it, if two corps "
            "know this chat_id, the one wecom-hub saw first is answered.",
        ),
    ] = None,
) -> GroupDetailOut:
    async with hub.sessionmaker() as session:
        scope = await app_scope(session, app)
        detail = await queries.get_group(session, chat_id, corp_id=scope.corp_id if scope else None)
    return GroupDetailOut.of(detail)
