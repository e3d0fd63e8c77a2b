"""Customers on the wire: the list's items, and one customer with follows, groups and timeline."""

from dataclasses import asdict
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.schemas import Page
from app.queries.customers import CustomerDetail, CustomerItem

_CUSTOMER_EXAMPLE: dict[str, Any] = {
    "corp_id": "ww1234567890abcdef",
    "external_userid": "wmqfasd1e19278asdf8tB-vtTEh3SQ3Q",
    "name": "李雷",
    "type": 1,
    "gender": 1,
    "corp_name": None,
    "unionid": "oAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "first_seen_at": "2026-11-29T05:30:00Z",
    "enriched_at": "2026-11-29T05:30:01Z",
}
_FOLLOW_EXAMPLE: dict[str, Any] = {
    "userid": "zhangsan",
    "status": "active",
    "added_at": "2026-11-29T05:30:00Z",
    "add_way": 1,
    "state": "spring_promo",
    "remark": "李雷 (展会)",
    "tag_ids": ["etAAAAAAAAAAAAAAAAAAAAAAAAAA"],
}
_ITEM_EXAMPLE = {**_CUSTOMER_EXAMPLE, "follows": [_FOLLOW_EXAMPLE]}
_DETAIL_EXAMPLE: dict[str, Any] = {
    **_CUSTOMER_EXAMPLE,
    "follows": [
        {
            **{k: v for k, v in _FOLLOW_EXAMPLE.items() if k != "tag_ids"},
            "description": None,
            "tags": [{"tag_id": "etAAAAAAAAAAAAAAAAAAAAAAAAAA", "name": "VIP"}],
            "deleted_by_customer_at": None,
            "deleted_by_member_at": None,
            "delete_source": None,
        }
    ],
    "groups": [
        {
            "chat_id": "wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA",
            "name": "春季活动群",
            "joined_at": "2026-11-29T06:00:00Z",
            "join_scene": 3,
            "quit_at": None,
        }
    ],
    "timeline": [
        {
            "at": "2026-11-29T05:30:00.120Z",
            "kind": "action",
            "id": 812,
            "type": "welcome",
            "status": "skipped",
            "summary": None,
            "reason": "no enabled welcome rule matches state 'spring_promo'",
            "error_code": None,
            "error_message": None,
        },
        {
            "at": "2026-11-29T05:30:00.050Z",
            "kind": "event",
            "id": 5120,
            "type": "add_external_contact",
            "status": "processed",
            "summary": "member zhangsan, channel state spring_promo",
            "reason": None,
            "error_code": None,
            "error_message": None,
        },
    ],
}

_STATUS = Field(
    description="active, half (added, not yet confirmed by the member), deleted_by_customer "
    "(churn: the customer deleted the member), deleted_by_member."
)


class FollowOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_FOLLOW_EXAMPLE]}
    )

    userid: str = Field(description="The member.")
    status: str = _STATUS
    added_at: AwareDatetime | None
    add_way: int | None = Field(description="WeCom's add_way: 1 QR code, 2 phone number, …")
    state: str | None = Field(description="The channel (联系我) state the customer came by.")
    remark: str | None
    tag_ids: list[str]


class CustomerOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ITEM_EXAMPLE]})

    corp_id: str
    external_userid: str
    name: str | None
    type: int | None = Field(description="1 a WeChat user, 2 a WeCom user.")
    gender: int | None = Field(description="0 unknown, 1 male, 2 female.")
    corp_name: str | None = Field(description="The customer's corp, for a WeCom user.")
    unionid: str | None
    first_seen_at: AwareDatetime | None
    enriched_at: AwareDatetime | None = Field(
        description="When WeCom's details were last fetched; null: not yet."
    )
    follows: list[FollowOut] = Field(description="Every member the customer is related to.")

    @classmethod
    def of(cls, item: CustomerItem) -> "CustomerOut":
        return cls.model_validate(
            {**asdict(item.customer), "follows": item.follows}, from_attributes=True
        )


class CustomerPage(Page[CustomerOut]):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"data": [_ITEM_EXAMPLE], "next_cursor": "eyJrIjpbNDJdLCJmIjoiMWEyYiJ9"}]
        }
    )


class TagRefOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={"examples": [_DETAIL_EXAMPLE["follows"][0]["tags"][0]]},
    )

    tag_id: str
    name: str | None = Field(description="null: a tag the corp's tag list does not know yet.")


class FollowDetailOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_DETAIL_EXAMPLE["follows"][0]]}
    )

    userid: str = Field(description="The member.")
    status: str = _STATUS
    added_at: AwareDatetime | None
    add_way: int | None
    state: str | None
    remark: str | None
    description: str | None
    tags: list[TagRefOut]
    deleted_by_customer_at: AwareDatetime | None
    deleted_by_member_at: AwareDatetime | None
    delete_source: str | None = Field(description="DELETE_BY_TRANSFER when a transfer did it.")


class MembershipOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_DETAIL_EXAMPLE["groups"][0]]}
    )

    chat_id: str
    name: str | None = Field(description="The group's name.")
    joined_at: AwareDatetime | None
    join_scene: int | None
    quit_at: AwareDatetime | None = Field(description="null: still in the group.")


class TimelineEntryOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": _DETAIL_EXAMPLE["timeline"]}
    )

    at: AwareDatetime = Field(
        description="When wecom-hub received the event or created the action."
    )
    kind: Literal["event", "action"]
    id: int = Field(description="The event's or the action's id.")
    type: str = Field(description="The event's type or the action's kind (`welcome`, …).")
    status: str = Field(
        description="An event's processing status, or an action's: pending, running, "
        "succeeded, failed, expired, skipped."
    )
    summary: str | None = Field(description="For an event: the member and the channel state.")
    reason: str | None = Field(description="Why an action ended as it did, or why an event failed.")
    error_code: str | None = Field(description="An action's last error: `wecom.41051`, …")
    error_message: str | None = Field(description="WeCom's errmsg, or the error's text.")


class CustomerDetailOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_DETAIL_EXAMPLE]})

    corp_id: str
    external_userid: str
    name: str | None
    type: int | None
    gender: int | None
    corp_name: str | None
    unionid: str | None
    first_seen_at: AwareDatetime | None
    enriched_at: AwareDatetime | None
    follows: list[FollowDetailOut]
    groups: list[MembershipOut] = Field(description="Customer groups joined, newest first.")
    timeline: list[TimelineEntryOut] = Field(
        description="The newest 100 events about the customer and actions for them, newest "
        "first: a welcome's status, reason and WeCom's error are here."
    )

    @classmethod
    def of(cls, detail: CustomerDetail) -> "CustomerDetailOut":
        return cls.model_validate(
            {
                **asdict(detail.customer),
                "follows": detail.follows,
                "groups": detail.groups,
                "timeline": detail.timeline,
            },
            from_attributes=True,
        )
