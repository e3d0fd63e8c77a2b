"""Messages on the wire: what was said, by whom, where; the raw payload stays in the event log."""

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.schemas import Page
from app.queries.messages import Source

_MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": 9042,
    "app": "shop",
    "source": "kf",
    "msg_id": "msgAAAAAAAAAAAAAAAAAAAAAA",
    "sender": "wmqfasd1e19278asdf8tB-vtTEh3SQ3Q",
    "open_kfid": "wkAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "msg_type": "text",
    "content": "多少钱？",
    "sent_at": "2026-11-29T05:31:12Z",
}


class MessageOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_MESSAGE_EXAMPLE]}
    )

    id: int
    app: str = Field(description="The slug of the app that received it.")
    source: Source = Field(
        description="app: a member wrote to the app; kf: a customer to 微信客服."
    )
    msg_id: str
    sender: str = Field(description="A member's userid (app) or a customer's external_userid (kf).")
    open_kfid: str | None = Field(description="The 微信客服 account, for kf messages.")
    msg_type: str = Field(description="text, image, voice, …")
    content: str | None = Field(description="The text of a text message; null for others.")
    sent_at: AwareDatetime | None


class MessagePage(Page[MessageOut]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_MESSAGE_EXAMPLE], "next_cursor": None}]}
    )
