"""Webhook subscriptions and their deliveries on the wire. Requests are the subscriptions
service's own models (WebhookSpec, WebhookPatch)."""

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.schemas import Page
from app.api.schemas.actions import ActionError, AttemptOut
from app.webhooks.subscriptions import WebhookView

WEBHOOK_EXAMPLE: dict[str, Any] = {
    "id": 4,
    "url": "https://crm.internal.example.com/hooks/wecom",
    "event_types": ["customer.added", "customer.deleted_member"],
    "description": "CRM sync",
    "enabled": True,
    "disabled_reason": None,
    "failing_since": None,
    "previous_secret_until": None,
    "created_at": "2026-11-29T06:00:00+00:00",
    "updated_at": "2026-11-29T06:00:00+00:00",
}
DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": 9120,
    "message_id": "msg_event88213_customer_added",
    "type": "customer.added",
    "event_id": 88213,
    "status": "pending",
    "attempts": 1,
    "error": {"code": "http.503", "message": "answered 503"},
    "next_attempt_at": "2026-11-29T06:06:00+00:00",
    "created_at": "2026-11-29T06:01:00+00:00",
    "finished_at": None,
}


class WebhookPage(Page[WebhookView]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [WEBHOOK_EXAMPLE], "next_cursor": None}]}
    )


class WebhookWithSecret(WebhookView):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**WEBHOOK_EXAMPLE, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]
        }
    )

    secret: str = Field(description="The signing secret; shown only in this answer.")


class DeliveryOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [DELIVERY_EXAMPLE]})

    id: int = Field(description="The delivery's id (an action of kind webhook).")
    message_id: str = Field(description="`webhook-id`: the same on every retry.")
    type: str
    event_id: int | None
    status: str
    attempts: int
    error: ActionError | None
    next_attempt_at: AwareDatetime
    created_at: AwareDatetime
    finished_at: AwareDatetime | None


class DeliveryDetailOut(DeliveryOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **DELIVERY_EXAMPLE,
                    "message": {
                        "type": "customer.added",
                        "timestamp": "2026-11-29T06:01:00+00:00",
                        "data": {"event_id": 88213, "external_userid": "wm…", "userid": "zhangsan"},
                    },
                    "attempts_log": [],
                }
            ]
        }
    )

    message: dict[str, Any] = Field(description="The body sent, `{type, timestamp, data}`.")
    attempts_log: list[AttemptOut]


class DeliveryPage(Page[DeliveryOut]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [DELIVERY_EXAMPLE], "next_cursor": None}]}
    )


class TestSent(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"message_id": "msg_test_3f…"}]})

    message_id: str


class Recover(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"since": "2026-11-28T00:00:00+08:00"}]}
    )

    since: AwareDatetime = Field(description="Deliveries created since then that failed.")


class Recovered(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"redelivering": 37}]})

    redelivering: int
