"""Customer tags on the wire."""

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.schemas import Page

_TAG_EXAMPLE: dict[str, Any] = {
    "corp_id": "ww1234567890abcdef",
    "tag_id": "etAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "name": "VIP",
    "group_id": "etGGGGGGGGGGGGGGGGGGGGGGGGGG",
    "group_name": "客户等级",
    "order": 1,
    "created_at": "2026-10-01T08:00:00Z",
    "deleted_at": None,
}


class TagOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_TAG_EXAMPLE]})

    corp_id: str
    tag_id: str
    name: str | None
    group_id: str | None
    group_name: str | None
    order: int | None = Field(description="WeCom's order: larger sorts first in its console.")
    created_at: AwareDatetime | None
    deleted_at: AwareDatetime | None = Field(description="null: the tag exists.")


class TagPage(Page[TagOut]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_TAG_EXAMPLE], "next_cursor": None}]}
    )
