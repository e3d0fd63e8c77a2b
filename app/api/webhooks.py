"""/api/v1/webhooks: subscriptions to wecom-hub's events (admin keys), their deliveries,
redelivery and recovery. Receivers verify with any Standard Webhooks library."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.actions.kinds import ActionStatus
from app.api.deps import AdminKey, HubDep, who
from app.api.idempotency import IdempotencyDep
from app.api.pagination import CursorParam, Limit, PageRequest, RowId
from app.api.schemas.actions import ActionError, AttemptOut
from app.api.schemas.webhooks import (
    DeliveryDetailOut,
    DeliveryOut,
    DeliveryPage,
    Recover,
    Recovered,
    TestSent,
    WebhookPage,
    WebhookWithSecret,
)
from app.queries import before_id
from app.queries.deliveries import Delivery, get_delivery, list_deliveries
from app.webhooks import subscriptions
from app.webhooks.subscriptions import WebhookPatch, WebhookSpec, WebhookView

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.get("", response_model=WebhookPage)
async def webhooks(_: AdminKey, hub: HubDep) -> WebhookPage:
    """Every subscription, newest first; a single page (there are few)."""
    async with hub.sessionmaker() as session:
        return WebhookPage(data=await subscriptions.list_webhooks(session), next_cursor=None)


@router.post("", status_code=201, response_model=WebhookWithSecret)
async def create(spec: WebhookSpec, _: AdminKey, hub: HubDep) -> WebhookWithSecret:
    """The answer is the only time the signing secret is shown. (No Idempotency-Key: its
    stored answer would keep the secret.)"""
    async with hub.sessionmaker.begin() as session:
        view, secret = await subscriptions.create_webhook(session, hub.box, spec)
    return WebhookWithSecret(**view.model_dump(), secret=secret)


@router.get("/{webhook_id}", response_model=WebhookView)
async def webhook(webhook_id: RowId, _: AdminKey, hub: HubDep) -> WebhookView:
    async with hub.sessionmaker() as session:
        return await subscriptions.get_webhook(session, webhook_id)


@router.patch("/{webhook_id}", response_model=WebhookView)
async def update(
    webhook_id: RowId, patch: WebhookPatch, _: AdminKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        view = await subscriptions.update_webhook(session, webhook_id, patch)
        return await idem.remember(session, 200, view)


@router.delete("/{webhook_id}", status_code=204)
async def delete(webhook_id: RowId, _: AdminKey, hub: HubDep) -> Response:
    async with hub.sessionmaker.begin() as session:
        await subscriptions.delete_webhook(session, webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookWithSecret)
async def rotate_secret(webhook_id: RowId, _: AdminKey, hub: HubDep) -> WebhookWithSecret:
    """A new secret, shown only now; for 24 h deliveries carry a signature with each."""
    async with hub.sessionmaker.begin() as session:
        view, secret = await subscriptions.rotate_secret(session, hub.box, webhook_id)
    return WebhookWithSecret(**view.model_dump(), secret=secret)


@router.post("/{webhook_id}/test", status_code=202, response_model=TestSent)
async def test(webhook_id: RowId, _: AdminKey, hub: HubDep) -> TestSent:
    """A `webhook.test` message to this subscription, delivered like any other."""
    async with hub.sessionmaker.begin() as session:
        return TestSent(message_id=await subscriptions.send_test(session, webhook_id))


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
async def deliveries(
    webhook_id: RowId,
    _: AdminKey,
    hub: HubDep,
    status: ActionStatus | None = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> DeliveryPage:
    page = PageRequest.of(limit, cursor, webhook=webhook_id, status=status)
    async with hub.sessionmaker() as session:
        await subscriptions.get_webhook(session, webhook_id)
        rows = await list_deliveries(
            session, webhook_id, status=status, before_id=before_id(page.after), limit=limit + 1
        )
    kept, next_cursor = page.page(rows, key=lambda row: [row.id])
    return DeliveryPage(data=[_out(row) for row in kept], next_cursor=next_cursor)


@router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=DeliveryDetailOut)
async def delivery(
    webhook_id: RowId, delivery_id: RowId, _: AdminKey, hub: HubDep
) -> DeliveryDetailOut:
    async with hub.sessionmaker() as session:
        detail = await get_delivery(session, webhook_id, delivery_id)
    return DeliveryDetailOut(
        **_out(detail.delivery).model_dump(),
        message=detail.message,
        attempts_log=[AttemptOut.model_validate(a, from_attributes=True) for a in detail.attempts],
    )


@router.post("/{webhook_id}/deliveries/{delivery_id}/redeliver", status_code=202)
async def redeliver(
    webhook_id: RowId, delivery_id: RowId, principal: AdminKey, hub: HubDep
) -> Response:
    """Send it again now, with the same `webhook-id`."""
    async with hub.sessionmaker.begin() as session:
        await subscriptions.redeliver(session, webhook_id, delivery_id, by=who(principal))
    return Response(status_code=202)


@router.post("/{webhook_id}/recover", status_code=202, response_model=Recovered)
async def recover(webhook_id: RowId, body: Recover, principal: AdminKey, hub: HubDep) -> Recovered:
    """Send again every delivery that failed since `since`, e.g. after the receiver's
    outage, once it is back."""
    async with hub.sessionmaker.begin() as session:
        count = await subscriptions.recover(session, webhook_id, body.since, by=who(principal))
    return Recovered(redelivering=count)


def _out(delivery: Delivery) -> DeliveryOut:
    values = {name: getattr(delivery, name) for name in delivery.__dataclass_fields__}
    code, message = values.pop("error_code"), values.pop("error_message")
    values["error"] = None if code is None else ActionError(code=code, message=message)
    return DeliveryOut.model_validate(values)
