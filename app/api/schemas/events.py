"""Events on the wire: each callback as stored, with the fields WeCom sent and the
actions it caused."""

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.schemas import Page
from app.api.schemas.actions import ACTION_EXAMPLE, ActionOut

EVENT_EXAMPLE: dict[str, Any] = {
    "id": 88213,
    "app": "shop",
    "received_at": "2026-11-29T06:01:00.02+00:00",
    "create_time": "2026-11-29T06:01:00+00:00",
    "family": "change_external_contact",
    "type": "add_external_contact",
    "msg_id": None,
    "external_userid": "wmqfasd1e1927831291723123109r712",
    "chat_id": None,
    "status": "processed",
    "attempts": 1,
    "processed_at": "2026-11-29T06:01:00.03+00:00",
    "error": None,
}


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [EVENT_EXAMPLE]})

    id: int
    app: str
    received_at: AwareDatetime
    create_time: AwareDatetime | None = Field(description="WeCom's CreateTime.")
    family: str = Field(description="change_external_contact, change_external_chat, message, …")
    type: str = Field(description="add_external_contact, text, …")
    msg_id: str | None
    external_userid: str | None
    chat_id: str | None
    status: str = Field(description="pending, processed or failed.")
    attempts: int
    processed_at: AwareDatetime | None
    error: str | None = Field(description="Why processing failed, if it did.")


class EventDetailOut(EventOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **EVENT_EXAMPLE,
                    "fields": {
                        "ChangeType": "add_external_contact",
                        "UserID": "zhangsan",
                        "ExternalUserID": "wmqfasd1e1927831291723123109r712",
                        "State": "store_sh",
                        "WelcomeCode": "CALLBACK_CODE",
                    },
                    "dedup_key": "fields:3f9a…",
                    "actions": [ACTION_EXAMPLE],
                }
            ]
        }
    )

    fields: dict[str, Any] = Field(description="The decrypted message's fields, as sent.")
    dedup_key: str
    actions: list[ActionOut]


class EventPage(Page[EventOut]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [EVENT_EXAMPLE], "next_cursor": None}]}
    )
