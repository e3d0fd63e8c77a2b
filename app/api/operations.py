"""Operations over the API: each check what can be checked at once, then becomes an action
(202 with it); GET /api/v1/actions/{id} follows it to its end."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import Enqueued
from app.api.deps import HubDep, WriteKey, who
from app.api.idempotency import IdempotencyDep
from app.api.schemas.actions import Accepted, ActionOut
from app.api.schemas.operations import AppMessageIn, KfMessageIn, TagChange
from app.operations.app_messages import AppMessage, send_app_message
from app.operations.kf_messages import KfText, send_kf_text
from app.operations.tags import TagRequest, tag_customer
from app.queries.actions import get_action

router = APIRouter(tags=["operations"])


async def _accepted(session: AsyncSession, enqueued: Enqueued) -> Accepted:
    assert enqueued.id is not None  # a fresh key: this call wrote it
    detail = await get_action(session, enqueued.id)
    return Accepted(action=ActionOut.of(detail.action))


@router.post(
    "/customers/{external_userid}/tags",
    status_code=202,
    response_model=Accepted,
)
async def tag(
    external_userid: str,
    change: TagChange,
    principal: WriteKey,
    hub: HubDep,
    idem: IdempotencyDep,
) -> JSONResponse:
    """Add and remove the corp's tags (externalcontact/mark_tag), as a member the customer
    is a friend of."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        request = TagRequest(external_userid, change.add, change.remove, change.userid)
        enqueued = await tag_customer(session, request, by=who(principal))
        return await idem.remember(session, 202, await _accepted(session, enqueued))


@router.post("/kf/messages", status_code=202, response_model=Accepted)
async def kf_message(
    message: KfMessageIn, principal: WriteKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """Text to a 微信客服 customer (kf/send_msg): only within 48 h of the customer's last
    message and 5 messages per customer message (409 `kf_window_closed`, `kf_reply_limit`)."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        text = KfText(message.app, message.open_kfid, message.external_userid, message.text)
        enqueued = await send_kf_text(session, text, by=who(principal))
        return await idem.remember(session, 202, await _accepted(session, enqueued))


@router.post("/app-messages", status_code=202, response_model=Accepted)
async def app_message(
    message: AppMessageIn, principal: WriteKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """Text or markdown to members, departments or tags, through an app (message/send)."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        request = AppMessage(
            message.app,
            message.msgtype,
            message.content,
            message.touser,
            message.toparty,
            message.totag,
        )
        enqueued = await send_app_message(session, request, by=who(principal))
        return await idem.remember(session, 202, await _accepted(session, enqueued))
