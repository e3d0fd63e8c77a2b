"""What a broadcast is asked as: the same model for `POST /api/v1/broadcasts` and for
`wecom-hub broadcasts send`, so both accept exactly the same thing (as rules do)."""

from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.automations.rules import Attachment

ChatType = Literal["single", "group"]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MAX_TEXT_BYTES = 4000  # add_msg_template's text.content
MAX_ATTACHMENTS = 9
MAX_LISTED = 100_000  # ids given one by one: bounds the request, not WeCom


class AudienceSpec(BaseModel):
    """Whom to send to, chosen by wecom-hub's own state; every criterion given must hold
    for the same follow (a customer tagged X *by the member* added through channel Y), and
    within a list any value will do. Only active follows count: churned customers and
    those a member deleted are never sent to.

    Customers (chat_type single): tags, states (or the channels that have them), userids,
    added_since/added_until, or an explicit external_userids list (narrowed by the others
    when given together).
    Customer groups (chat_type group): chat_ids and/or owners; dismissed groups are left out."""

    model_config = ConfigDict(extra="forbid")

    tags: list[Id] = Field(default_factory=list, max_length=1000, description="Any of these.")
    states: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=1000, description="Channel `state`s, any of these."
    )
    channels: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(
        default_factory=list,
        max_length=1000,
        description="Channel ids (`GET /api/v1/channels`): their customers, as `states` would.",
    )
    userids: list[Id] = Field(
        default_factory=list, max_length=10_000, description="Only customers of these members."
    )
    added_since: AwareDatetime | None = Field(default=None, description="Added at or after.")
    added_until: AwareDatetime | None = Field(default=None, description="Added before.")
    external_userids: list[Id] = Field(default_factory=list, max_length=MAX_LISTED)
    chat_ids: list[Id] = Field(default_factory=list, max_length=MAX_LISTED)
    owners: list[Id] = Field(default_factory=list, max_length=10_000)

    @property
    def chat_type(self) -> ChatType:
        return "group" if self.chat_ids or self.owners else "single"

    @model_validator(mode="after")
    def _one_kind(self) -> "AudienceSpec":
        customers = bool(
            self.tags
            or self.states
            or self.channels
            or self.userids
            or self.added_since
            or self.added_until
            or self.external_userids
        )
        if customers and self.chat_type == "group":
            raise ValueError(
                "customers (tags, states, channels, userids, added_*, external_userids) or "
                "customer groups (chat_ids, owners), not both: they are separate WeCom tasks"
            )
        if not customers and self.chat_type == "single":
            raise ValueError(
                "choose the audience: tags, states, channels, userids, added_since/added_until or "
                "external_userids for customers; chat_ids or owners for customer groups"
            )
        if self.added_since and self.added_until and self.added_since >= self.added_until:
            raise ValueError("added_since must be before added_until")
        return self


class BroadcastContent(BaseModel):
    """Text (not a template: WeCom sends the same words to everyone) and up to 9 attachments;
    a file is named by its id (`sha256`, from POST /api/v1/media), as in rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = ""
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    @field_validator("text")
    @classmethod
    def _length(cls, text: str) -> str:
        size = len(text.encode())
        if size > MAX_TEXT_BYTES:
            raise ValueError(f"text is {size} bytes; WeCom allows {MAX_TEXT_BYTES}")
        return text

    @model_validator(mode="after")
    def _not_empty(self) -> "BroadcastContent":
        if not self.text and not self.attachments:
            raise ValueError("a broadcast needs text or attachments")
        return self

    def fingerprint(self) -> tuple[str | None, tuple[str, ...]]:
        """What get_groupmsg_list_v2 shows of a mass message, to know ours again: the text
        and the kinds of its attachments."""
        return (self.text or None, tuple(a.msgtype for a in self.attachments))


class BroadcastSpec(BaseModel):
    """A broadcast, as `POST /api/v1/broadcasts` and `broadcasts send` take it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "app": "shop",
                    "audience": {"states": ["store_a"], "tags": ["etVIP"]},
                    "content": {"text": "双十一会员专享：全场八折"},
                    "dry_run": True,
                },
                {
                    "app": "shop",
                    "audience": {"owners": ["zhangsan"]},
                    "content": {
                        "text": "新品到店",
                        "attachments": [
                            {"msgtype": "link", "title": "新品", "url": "https://example.com/n"}
                        ],
                    },
                },
            ]
        },
    )

    app: Id = Field(description="Slug of the app to send as.")
    audience: AudienceSpec
    content: BroadcastContent
    dry_run: bool = Field(
        default=False,
        description="Only answer how many would receive it, per member; nothing is stored or sent.",
    )

    def stored_audience(self) -> dict[str, Any]:
        """The spec as given (what was left out stays out), to show later."""
        return self.audience.model_dump(mode="json", exclude_defaults=True)
