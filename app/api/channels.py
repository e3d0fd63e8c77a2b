"""/api/v1/channels: 「联系我」 codes and 加入群聊 ways, made at WeCom while the request waits
(201 with `state`, `config_id` and `qr_code`), their image, and their numbers.

A create runs in the route's idempotency transaction like every POST, while the service
commits the channel's reservation and its result in transactions of its own around the
WeCom call (docs/adr/0009-channels.md): with an Idempotency-Key, a retry answers the same
channel, also after a crash between WeCom's answer and the end of the request.
"""

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import HubDep, Principal, ReadKey, WriteKey
from app.api.idempotency import HEADER, IdempotencyDep
from app.api.pagination import CursorParam, Instant, Limit, PageRequest, RowId
from app.api.schemas.channels import ChannelPage, ChannelStatsOut
from app.channels import qr, service
from app.channels.service import ChannelPatch, ChannelSpec, ChannelView, Kind
from app.queries import before_id
from app.queries.channels import ChannelRef, channel_stats
from app.queries.stats import DEFAULT_TZ, stats_window
from app.routers.problems import problem_responses

if TYPE_CHECKING:
    from app.main import Hub

router = APIRouter(prefix="/channels", tags=["channels"])


def _wecom(hub: "Hub") -> service.Wecom:
    return service.Wecom(hub.wecom, hub.box)


async def _request_key(request: Request, principal: Principal) -> str | None:
    """Who asked, with which Idempotency-Key, for what: the reservation a retry resumes."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    digest = hashlib.sha256(f"{principal.key_id}\0{key}\0".encode())
    digest.update(await request.body())
    return digest.hexdigest()


@router.post(
    "",
    status_code=201,
    response_model=ChannelView,
    responses=problem_responses(502, 503),
)
async def create(
    spec: ChannelSpec,
    principal: WriteKey,
    hub: HubDep,
    idem: IdempotencyDep,
    request: Request,
) -> JSONResponse:
    """Makes the way at WeCom (add_contact_way, or add_join_way and get_join_way) with a
    state wecom-hub generates, and the channel's welcome and tag rules. WeCom's refusals
    come back with their errcode (`wecom.41045`, `wecom.60011`…); WeCom busy or silent is
    503 with Retry-After."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        view = await service.create_channel(
            hub.sessionmaker,
            _wecom(hub),
            spec,
            request_key=await _request_key(request, principal),
        )
        return await idem.remember(session, 201, view)


@router.get("", response_model=ChannelPage)
async def channels(
    _: ReadKey,
    hub: HubDep,
    app: Annotated[str | None, Query(description="Only the channels of this app's slug.")] = None,
    kind: Kind | None = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> ChannelPage:
    page = PageRequest.of(limit, cursor, app=app, kind=kind)
    async with hub.sessionmaker() as session:
        rows = await service.list_channels(
            session, app=app, kind=kind, after_id=before_id(page.after), limit=limit + 1
        )
    kept, next_cursor = page.page(rows, key=lambda channel: [channel.id])
    return ChannelPage(data=kept, next_cursor=next_cursor)


@router.get("/{channel_id}", response_model=ChannelView)
async def channel(channel_id: RowId, _: ReadKey, hub: HubDep) -> ChannelView:
    async with hub.sessionmaker() as session:
        return await service.get_channel(session, channel_id)


@router.patch("/{channel_id}", response_model=ChannelView, responses=problem_responses(502, 503))
async def update(
    channel_id: RowId, patch: ChannelPatch, _: WriteKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """Members, departments, groups, remark and skip_verify are changed at WeCom first (a
    list given replaces the old one whole, as WeCom's update does); the name only here."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        view = await service.update_channel(session, _wecom(hub), channel_id, patch)
        return await idem.remember(session, 200, view)


@router.delete("/{channel_id}", status_code=204, responses=problem_responses(502, 503))
async def delete(channel_id: RowId, _: WriteKey, hub: HubDep) -> Response:
    """Deletes the way at WeCom (one WeCom no longer knows is deleted here all the same),
    and the rules the channel made."""
    async with hub.sessionmaker.begin() as session:
        await service.delete_channel(session, _wecom(hub), channel_id)
    return Response(status_code=204)


@router.get(
    "/{channel_id}/qr.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The code, to print."},
        **problem_responses(502, 503),
    },
)
async def qr_png(channel_id: RowId, _: ReadKey, hub: HubDep) -> Response:
    """Fetched from WeCom's qr_code URL the first time, then served from wecom-hub."""
    png = await qr.channel_png(hub.sessionmaker, _wecom(hub), channel_id)
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/{channel_id}/stats", response_model=ChannelStatsOut)
async def stats(
    channel_id: RowId,
    _: ReadKey,
    hub: HubDep,
    since: Annotated[
        Instant | None,
        Query(description="From this hour (a whole UTC hour); default: 30 days before `until`."),
    ] = None,
    until: Annotated[
        Instant | None,
        Query(description="To this hour, not included (a whole UTC hour); default: now."),
    ] = None,
    tz: Annotated[
        str, Query(max_length=64, description="The IANA time zone the days are counted in.")
    ] = DEFAULT_TZ,
) -> ChannelStatsOut:
    """Customers added through the channel and how many stayed, its welcomes and tags (a
    join way: who joined its groups), in total and per day; from wecom-hub's own records."""
    async with hub.sessionmaker() as session:
        view = await service.get_channel(session, channel_id)
        window = stats_window(
            since=since, until=until, tz=tz, corp_id=view.corp_id, now=datetime.now(UTC)
        )
        tag_rule_id = view.tag_rule_id
        totals, by_day = await channel_stats(
            session, ChannelRef(view.corp_id, view.state, tag_rule_id), window
        )
    return ChannelStatsOut.of(view, window, totals, by_day)
