"""Webhook subscriptions: create (the signing secret shown this once), change, delete,
rotate the secret, send a test, redeliver one delivery, recover everything that failed
since a time. Functions take a session and never commit."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.control import requeue
from app.actions.kinds import ActionKind, status_sql
from app.crypto.at_rest import SecretBox
from app.errors import Conflict, ErrorCode, NotFound
from app.models import WebhookEndpoint
from app.webhooks.delivery import SECRET_PURPOSE
from app.webhooks.events import Message, WebhookEventType
from app.webhooks.publish import publish
from app.webhooks.signing import new_secret

ROTATION_OVERLAP = timedelta(hours=24)  # both secrets sign this long after a rotation


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _subscribable(event_type: WebhookEventType) -> WebhookEventType:
    if event_type == WebhookEventType.WEBHOOK_TEST:
        raise ValueError("webhook.test goes to one subscription when asked, not by subscription")
    return event_type


WebhookUrl = Annotated[str, Field(min_length=8, max_length=2000), AfterValidator(_http_url)]
Subscribable = Annotated[WebhookEventType, AfterValidator(lambda t: _subscribable(t))]


class WebhookSpec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://crm.internal.example.com/hooks/wecom",
                    "event_types": ["customer.added", "customer.deleted_member"],
                    "description": "CRM sync",
                    "enabled": True,
                }
            ]
        },
    )

    url: WebhookUrl
    event_types: list[Subscribable] = Field(
        default_factory=list, max_length=50, description="Empty: every event type."
    )
    description: str = Field(default="", max_length=500)
    enabled: StrictBool = True


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": True}]})

    url: WebhookUrl | None = None
    event_types: list[Subscribable] | None = Field(default=None, max_length=50)
    description: str | None = Field(default=None, max_length=500)
    enabled: StrictBool | None = Field(
        default=None, description="Enabling again clears the reason it was disabled."
    )


class WebhookView(BaseModel):
    """A subscription as shown: never its secret."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: int
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_until: datetime | None = Field(
        description="Until then the secret before the last rotation signs too."
    )
    created_at: datetime
    updated_at: datetime


async def _endpoint(session: AsyncSession, webhook_id: int) -> WebhookEndpoint:
    found = await session.get(WebhookEndpoint, webhook_id, with_for_update=True)
    if found is None:
        raise NotFound(f"no webhook {webhook_id}", code=ErrorCode.WEBHOOK_NOT_FOUND)
    return found


async def create_webhook(
    session: AsyncSession, box: SecretBox, spec: WebhookSpec
) -> tuple[WebhookView, str]:
    """The subscription and its signing secret (`whsec_…`), which is shown only now."""
    secret = new_secret()
    endpoint = WebhookEndpoint(
        url=spec.url,
        event_types=[str(t) for t in spec.event_types],
        description=spec.description,
        enabled=spec.enabled,
        secret_sealed=box.seal(secret, purpose=SECRET_PURPOSE),
    )
    session.add(endpoint)
    await session.flush()
    await session.refresh(endpoint)
    return WebhookView.model_validate(endpoint), secret


async def list_webhooks(session: AsyncSession) -> list[WebhookView]:
    rows = await session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id.desc()))
    return [WebhookView.model_validate(row) for row in rows]


async def get_webhook(session: AsyncSession, webhook_id: int) -> WebhookView:
    return WebhookView.model_validate(await _endpoint(session, webhook_id))


async def update_webhook(
    session: AsyncSession, webhook_id: int, patch: WebhookPatch
) -> WebhookView:
    endpoint = await _endpoint(session, webhook_id)
    changes: dict[str, Any] = patch.model_dump(exclude_unset=True)
    if "event_types" in changes:
        changes["event_types"] = [str(t) for t in changes["event_types"]]
    if changes.get("enabled"):  # enabled again: a fresh start
        changes |= {"disabled_reason": None, "failing_since": None}
    for name, value in changes.items():
        setattr(endpoint, name, value)
    endpoint.updated_at = datetime.now(UTC)
    await session.flush()
    return WebhookView.model_validate(endpoint)


async def delete_webhook(session: AsyncSession, webhook_id: int) -> None:
    """Deliveries still waiting end `skipped` (the subscription was deleted); the ones made
    stay listed in the actions."""
    await session.delete(await _endpoint(session, webhook_id))


async def rotate_secret(
    session: AsyncSession, box: SecretBox, webhook_id: int
) -> tuple[WebhookView, str]:
    """A new secret, shown only now; the old one keeps signing for 24 hours, so a receiver
    can switch without missing a message."""
    endpoint = await _endpoint(session, webhook_id)
    secret = new_secret()
    endpoint.previous_secret_sealed = endpoint.secret_sealed
    endpoint.previous_secret_until = datetime.now(UTC) + ROTATION_OVERLAP
    endpoint.secret_sealed = box.seal(secret, purpose=SECRET_PURPOSE)
    endpoint.updated_at = datetime.now(UTC)
    await session.flush()
    return WebhookView.model_validate(endpoint), secret


def _enabled(endpoint: WebhookEndpoint) -> None:
    if not endpoint.enabled:
        raise Conflict(
            f"webhook {endpoint.id} is disabled ({endpoint.disabled_reason or 'by request'});"
            " enable it first",
            code=ErrorCode.WEBHOOK_DISABLED,
        )


async def send_test(session: AsyncSession, webhook_id: int) -> str:
    """A `webhook.test` message to this subscription only; the message id."""
    endpoint = await _endpoint(session, webhook_id)
    _enabled(endpoint)
    message = Message(
        id=f"msg_test_{uuid.uuid4().hex}",
        type=WebhookEventType.WEBHOOK_TEST,
        timestamp=datetime.now(UTC),
        data={"webhook_id": webhook_id, "hello": "from wecom-hub"},
    )
    await publish(session, message, app_id=None, corp_id=None, endpoint_id=webhook_id)
    return message.id


_DELIVERY = f"""
    SELECT {status_sql("actions")} FROM actions
    WHERE id = :id AND kind = '{ActionKind.WEBHOOK}' AND target = :target FOR UPDATE
"""  # noqa: S608 - a constant
_DELIVERIES_OF = f"kind = '{ActionKind.WEBHOOK}' AND target = :target"


async def redeliver(session: AsyncSession, webhook_id: int, delivery_id: int, *, by: str) -> None:
    """Send one delivery again, now, whatever became of it (the same `webhook-id`: a
    receiver that has it already may ignore it)."""
    endpoint = await _endpoint(session, webhook_id)
    _enabled(endpoint)
    status = await session.scalar(text(_DELIVERY), {"id": delivery_id, "target": str(webhook_id)})
    if status is None:
        raise NotFound(
            f"no delivery {delivery_id} of webhook {webhook_id}",
            code=ErrorCode.DELIVERY_NOT_FOUND,
        )
    if status in ("pending", "running"):
        raise Conflict(
            f"delivery {delivery_id} is {status}: it is being delivered",
            code=ErrorCode.DELIVERY_IN_PROGRESS,
        )
    await requeue(
        session,
        f"{_DELIVERIES_OF} AND id = :id",
        {"id": delivery_id, "target": str(webhook_id)},
        reason=f"redelivered by {by}",
    )


async def recover(session: AsyncSession, webhook_id: int, since: datetime, *, by: str) -> int:
    """Send again every delivery that failed since `since` (after the receiver's outage);
    how many."""
    endpoint = await _endpoint(session, webhook_id)
    _enabled(endpoint)
    return await requeue(
        session,
        f"{_DELIVERIES_OF} AND status = 'failed' AND created_at >= :since",
        {"target": str(webhook_id), "since": since},
        reason=f"recovered by {by}",
    )
