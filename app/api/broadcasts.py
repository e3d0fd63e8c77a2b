"""/api/v1/broadcasts: 群发 to customers or customer groups chosen by wecom-hub's own state,
one WeCom task per member, and the funnel of what became of each recipient."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from app.api.deps import HubDep, ReadKey, WriteKey, who
from app.api.idempotency import IdempotencyDep
from app.api.pagination import CursorParam, Limit, PageRequest, RowId
from app.api.schemas.broadcasts import (
    BroadcastOut,
    BroadcastPage,
    CancelOut,
    DryRunOut,
    RemindOut,
    item,
)
from app.broadcasts import service
from app.broadcasts.spec import BroadcastSpec
from app.queries import before_id
from app.queries.broadcasts import get_broadcast, list_broadcasts
from app.routers.problems import problem_responses

router = APIRouter(prefix="/broadcasts", tags=["broadcasts"])

Status = Literal["sending", "waiting", "completed", "cancelled"]


@router.post(
    "",
    status_code=201,
    response_model=BroadcastOut,
    responses={200: {"model": DryRunOut, "description": "`dry_run`: the audience, per member."}},
)
async def create(
    spec: BroadcastSpec, principal: WriteKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """Resolve the audience now and store it, then make one WeCom task per member
    (add_msg_template, as actions: a retry never makes a second task). Members send it
    from their client; GET the broadcast to follow its funnel. With `dry_run`: 200 with the
    audience size per member, nothing stored. An audience reaching nobody: 422
    `broadcast_empty_audience`."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        if spec.dry_run:
            resolved = await service.dry_run(session, spec)
            return await idem.remember(session, 200, DryRunOut.of(resolved))
        detail = await service.create(session, spec, settings=hub.settings, by=who(principal))
        return await idem.remember(session, 201, BroadcastOut.of(detail))


@router.get("", response_model=BroadcastPage)
async def broadcasts(
    _: ReadKey,
    hub: HubDep,
    app: Annotated[str | None, Query(description="Only this app's broadcasts.")] = None,
    status: Status | None = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> BroadcastPage:
    page = PageRequest.of(limit, cursor, app=app, status=status)
    async with hub.sessionmaker() as session:
        rows = await list_broadcasts(
            session, app=app, status=status, before_id=before_id(page.after), limit=limit + 1
        )
    kept, next_cursor = page.page(rows, key=lambda row: [row.id])
    return BroadcastPage(data=[item(row) for row in kept], next_cursor=next_cursor)


@router.get("/{broadcast_id}", response_model=BroadcastOut)
async def broadcast(broadcast_id: RowId, _: ReadKey, hub: HubDep) -> BroadcastOut:
    async with hub.sessionmaker() as session:
        return BroadcastOut.of(await get_broadcast(session, broadcast_id))


@router.post(
    "/{broadcast_id}/remind",
    response_model=RemindOut,
    responses=problem_responses(429, 502),
)
async def remind(
    broadcast_id: RowId, _: WriteKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """Remind the members who have not sent it yet (remind_groupmsg_send). WeCom allows 3
    reminders per task in 24 hours: 429 `broadcast_remind_limit` once every one is used."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        reminded = await service.remind(session, hub.wecom, hub.box, broadcast_id)
        return await idem.remember(session, 200, RemindOut.of(reminded))


@router.post("/{broadcast_id}/cancel", response_model=CancelOut, responses=problem_responses(502))
async def cancel(
    broadcast_id: RowId, _: WriteKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """Stop it (cancel_groupmsg_send for each task not sent yet; tasks not made yet never
    are). What members already sent stays sent. The broadcast completes as `cancelled`
    once the last results are read."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        cancelled = await service.cancel(session, hub.wecom, hub.box, broadcast_id)
        return await idem.remember(session, 200, CancelOut.of(cancelled))
