"""/api/v1/actions: every side effect, its status, reason and attempts; retry and cancel."""

from fastapi import APIRouter

from app.actions import control
from app.actions.kinds import ActionKind, ActionStatus
from app.api.deps import HubDep, ReadKey, WriteKey, who
from app.api.pagination import CursorParam, Limit, PageRequest, RowId
from app.api.schemas.actions import (
    ActionAttemptOut,
    ActionDetailOut,
    ActionOut,
    ActionPage,
)
from app.queries import app_scope, before_id
from app.queries.actions import ActionDetail, ActionFilters, get_action, list_actions

router = APIRouter(prefix="/actions", tags=["actions"])


@router.get("", response_model=ActionPage)
async def actions(
    _: ReadKey,
    hub: HubDep,
    kind: ActionKind | None = None,
    status: ActionStatus | None = None,
    app: str | None = None,
    external_userid: str | None = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> ActionPage:
    page = PageRequest.of(
        limit, cursor, kind=kind, status=status, app=app, external_userid=external_userid
    )
    async with hub.sessionmaker() as session:
        scope = await app_scope(session, app)
        filters = ActionFilters(
            kind=kind,
            status=status,
            app_id=scope.app_id if scope else None,
            external_userid=external_userid,
        )
        rows = await list_actions(
            session, filters, before_id=before_id(page.after), limit=limit + 1
        )
    kept, next_cursor = page.page(rows, key=lambda row: [row.id])
    return ActionPage(data=[ActionOut.of(row) for row in kept], next_cursor=next_cursor)


@router.get("/{action_id}", response_model=ActionDetailOut)
async def action(action_id: RowId, _: ReadKey, hub: HubDep) -> ActionDetailOut:
    async with hub.sessionmaker() as session:
        detail = await get_action(session, action_id)
    return _out(detail)


@router.post("/{action_id}/retry", response_model=ActionDetailOut)
async def retry(action_id: RowId, principal: WriteKey, hub: HubDep) -> ActionDetailOut:
    """A failed, expired or cancelled action runs again now (409 if its deadline has
    passed: a welcome code lives 20 seconds)."""
    async with hub.sessionmaker.begin() as session:
        await control.retry(session, action_id, by=who(principal))
        detail = await get_action(session, action_id)
    return _out(detail)


@router.post("/{action_id}/cancel", response_model=ActionDetailOut)
async def cancel(action_id: RowId, principal: WriteKey, hub: HubDep) -> ActionDetailOut:
    """Only a pending action (409 otherwise: a running one may already have reached WeCom)."""
    async with hub.sessionmaker.begin() as session:
        await control.cancel(session, action_id, by=who(principal))
        detail = await get_action(session, action_id)
    return _out(detail)


def _out(detail: ActionDetail) -> ActionDetailOut:
    return ActionDetailOut.model_validate(
        {
            **ActionOut.of(detail.action).model_dump(),
            "payload": detail.payload,
            "attempts_log": [ActionAttemptOut.model_validate(a) for a in detail.attempts],
        }
    )
