"""Customer groups on the wire: the list's items, and one group with its members."""

from dataclasses import asdict
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.schemas import Page
from app.queries.groups import GroupDetail

_GROUP_EXAMPLE: dict[str, Any] = {
    "corp_id": "ww1234567890abcdef",
    "chat_id": "wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA",
    "name": "春季活动群",
    "owner": "zhangsan",
    "notice": "每周五晚八点直播",
    "created_at": "2026-11-20T02:00:00Z",
    "dismissed_at": None,
    "member_count": 87,
    "enriched_at": "2026-11-29T05:30:01Z",
}
_MEMBER_EXAMPLE: dict[str, Any] = {
    "member_id": "wmqfasd1e19278asdf8tB-vtTEh3SQ3Q",
    "member_type": 2,
    "name": "李雷",
    "joined_at": "2026-11-29T06:00:00Z",
    "join_scene": 3,
    "invitor": None,
    "quit_at": None,
    "state": "spring_promo",
}


class GroupOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_GROUP_EXAMPLE]}
    )

    corp_id: str
    chat_id: str
    name: str | None
    owner: str | None = Field(description="The member who owns the group.")
    notice: str | None
    created_at: AwareDatetime | None
    dismissed_at: AwareDatetime | None = Field(description="null: not dismissed.")
    member_count: int = Field(description="Members who have not quit, customers and members.")
    enriched_at: AwareDatetime | None = Field(
        description="When WeCom's member list was last fetched; null: not yet."
    )


class GroupPage(Page[GroupOut]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_GROUP_EXAMPLE], "next_cursor": None}]}
    )


class GroupMemberOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_MEMBER_EXAMPLE]}
    )

    member_id: str = Field(description="A member's userid or a customer's external_userid.")
    member_type: int | None = Field(description="1 a corp member, 2 a customer.")
    name: str | None
    joined_at: AwareDatetime | None
    join_scene: int | None = Field(
        description="As WeCom said it: callbacks 0 invited / 3 QR code; groupchat/get 1 "
        "invited directly, 2 by link, 3 QR code."
    )
    invitor: str | None
    quit_at: AwareDatetime | None = Field(description="null: still in the group.")
    state: str | None = Field(description="The channel state the member joined by.")


class GroupDetailOut(GroupOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_GROUP_EXAMPLE, "members": [_MEMBER_EXAMPLE]}]}
    )

    members: list[GroupMemberOut] = Field(
        description="Everyone who has been in the group, those who quit included, oldest first."
    )

    @classmethod
    def of(cls, detail: GroupDetail) -> "GroupDetailOut":
        return cls.model_validate(
            {**asdict(detail.group), "members": detail.members}, from_attributes=True
        )
