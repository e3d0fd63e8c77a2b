"""Typed WeCom events (PROTOCOL.md §4), parsed from the fields stored with each event.

Every field is optional text unless WeCom guarantees it, and ids stay strings (AgentID may be
empty, MsgId may be Base64-like, tag ids start with `et`). Anything without a model here is
an `UnknownEvent`: stored, listed, never rejected.
"""

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.callbacks.safexml import XmlValue


class WecomEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)
    kind: ClassVar[tuple[str, str]] = ("unknown", "unknown")

    to_user: str = Field("", alias="ToUserName")
    from_user: str = Field("", alias="FromUserName")
    create_time: int = Field(0, alias="CreateTime")
    agent_id: str = Field("", alias="AgentID")


def _items(value: Any) -> list[str]:
    """MemChangeList arrives as <Item> children, or (one SDK test) as a comma list."""
    if isinstance(value, dict):
        value = value.get("Item", [])
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str) and item]
    return []


# change_external_contact ---------------------------------------------------------------


class ExternalContactEvent(WecomEvent):
    user_id: str = Field(alias="UserID")
    external_user_id: str = Field(alias="ExternalUserID")


class AddExternalContact(ExternalContactEvent):
    kind = ("change_external_contact", "add_external_contact")
    state: str = Field("", alias="State")
    welcome_code: str = Field("", alias="WelcomeCode")


class AddHalfExternalContact(AddExternalContact):
    kind = ("change_external_contact", "add_half_external_contact")


class EditExternalContact(ExternalContactEvent):
    kind = ("change_external_contact", "edit_external_contact")


class DelExternalContact(ExternalContactEvent):
    """The member deleted the customer (Source=DELETE_BY_TRANSFER when a transfer did it)."""

    kind = ("change_external_contact", "del_external_contact")
    source: str = Field("", alias="Source")


class DelFollowUser(ExternalContactEvent):
    """The customer deleted the member: churn."""

    kind = ("change_external_contact", "del_follow_user")


class TransferFail(ExternalContactEvent):
    kind = ("change_external_contact", "transfer_fail")
    fail_reason: str = Field("", alias="FailReason")


# change_external_chat ------------------------------------------------------------------


class ExternalChatEvent(WecomEvent):
    chat_id: str = Field(alias="ChatId")


class ChatCreate(ExternalChatEvent):
    kind = ("change_external_chat", "create")


class ChatDismiss(ExternalChatEvent):
    kind = ("change_external_chat", "dismiss")


class ChatUpdate(ExternalChatEvent):
    kind = ("change_external_chat", "update")
    update_detail: str = Field("", alias="UpdateDetail")
    join_scene: int | None = Field(None, alias="JoinScene")
    quit_scene: int | None = Field(None, alias="QuitScene")
    mem_change_cnt: int | None = Field(None, alias="MemChangeCnt")
    mem_change_list: list[str] = Field(default_factory=list, alias="MemChangeList")
    last_mem_ver: str = Field("", alias="LastMemVer")
    cur_mem_ver: str = Field("", alias="CurMemVer")

    _members = field_validator("mem_change_list", mode="before")(_items)

    @field_validator("join_scene", "quit_scene", "mem_change_cnt", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


# change_external_tag -------------------------------------------------------------------


class ExternalTagEvent(WecomEvent):
    id: str = Field("", alias="Id")
    tag_type: str = Field("", alias="TagType")  # "tag" or "tag_group"
    strategy_id: str = Field("", alias="StrategyId")


class TagCreate(ExternalTagEvent):
    kind = ("change_external_tag", "create")


class TagUpdate(ExternalTagEvent):
    kind = ("change_external_tag", "update")


class TagDelete(ExternalTagEvent):
    kind = ("change_external_tag", "delete")


class TagShuffle(ExternalTagEvent):
    kind = ("change_external_tag", "shuffle")


# app messages ---------------------------------------------------------------------------


class AppMessage(WecomEvent):
    msg_id: str = Field("", alias="MsgId")
    msg_type: str = Field(alias="MsgType")


class TextMessage(AppMessage):
    kind = ("message", "text")
    content: str = Field("", alias="Content")


class ImageMessage(AppMessage):
    kind = ("message", "image")
    pic_url: str = Field("", alias="PicUrl")
    media_id: str = Field("", alias="MediaId")


class VoiceMessage(AppMessage):
    kind = ("message", "voice")
    media_id: str = Field("", alias="MediaId")
    format: str = Field("", alias="Format")


class VideoMessage(AppMessage):
    kind = ("message", "video")
    media_id: str = Field("", alias="MediaId")
    thumb_media_id: str = Field("", alias="ThumbMediaId")


class LocationMessage(AppMessage):
    kind = ("message", "location")
    latitude: str = Field("", alias="Location_X")
    longitude: str = Field("", alias="Location_Y")
    scale: str = Field("", alias="Scale")
    label: str = Field("", alias="Label")


class LinkMessage(AppMessage):
    kind = ("message", "link")
    title: str = Field("", alias="Title")
    description: str = Field("", alias="Description")
    url: str = Field("", alias="Url")
    pic_url: str = Field("", alias="PicUrl")


# app events -------------------------------------------------------------------------------


class AppEvent(WecomEvent):
    event: str = Field(alias="Event")
    event_key: str = Field("", alias="EventKey")


class Subscribe(AppEvent):
    kind = ("event", "subscribe")


class Unsubscribe(AppEvent):
    kind = ("event", "unsubscribe")


class EnterAgent(AppEvent):
    kind = ("event", "enter_agent")


class Click(AppEvent):
    kind = ("event", "click")


class View(AppEvent):
    kind = ("event", "view")


class LocationReport(AppEvent):
    kind = ("event", "LOCATION")
    latitude: str = Field("", alias="Latitude")
    longitude: str = Field("", alias="Longitude")
    precision: str = Field("", alias="Precision")


class KfMsgOrEvent(WecomEvent):
    """微信客服 has news: pull it with kf/sync_msg, passing this Token."""

    kind = ("event", "kf_msg_or_event")
    token: str = Field("", alias="Token")
    open_kf_id: str = Field("", alias="OpenKfId")


# change_contact ---------------------------------------------------------------------------


class MemberChange(WecomEvent):
    user_id: str = Field(alias="UserID")
    new_user_id: str = Field("", alias="NewUserID")
    name: str = Field("", alias="Name")
    department: str = Field("", alias="Department")
    position: str = Field("", alias="Position")
    status: str = Field("", alias="Status")


class CreateUser(MemberChange):
    kind = ("change_contact", "create_user")


class UpdateUser(MemberChange):
    kind = ("change_contact", "update_user")


class DeleteUser(MemberChange):
    kind = ("change_contact", "delete_user")


class PartyChange(WecomEvent):
    id: str = Field(alias="Id")
    name: str = Field("", alias="Name")
    parent_id: str = Field("", alias="ParentId")


class CreateParty(PartyChange):
    kind = ("change_contact", "create_party")


class UpdateParty(PartyChange):
    kind = ("change_contact", "update_party")


class DeleteParty(PartyChange):
    kind = ("change_contact", "delete_party")


class UnknownEvent(WecomEvent):
    """No model for this family/type (yet): kept as received, projected into nothing."""

    model_config = ConfigDict(extra="allow")


MODELS: dict[tuple[str, str], type[WecomEvent]] = {
    model.kind: model
    for model in (
        AddExternalContact,
        AddHalfExternalContact,
        EditExternalContact,
        DelExternalContact,
        DelFollowUser,
        TransferFail,
        ChatCreate,
        ChatUpdate,
        ChatDismiss,
        TagCreate,
        TagUpdate,
        TagDelete,
        TagShuffle,
        TextMessage,
        ImageMessage,
        VoiceMessage,
        VideoMessage,
        LocationMessage,
        LinkMessage,
        Subscribe,
        Unsubscribe,
        EnterAgent,
        Click,
        View,
        LocationReport,
        KfMsgOrEvent,
        CreateUser,
        UpdateUser,
        DeleteUser,
        CreateParty,
        UpdateParty,
        DeleteParty,
    )
}


class InvalidEvent(Exception):
    """A known event type whose fields do not fit its model (e.g. no ExternalUserID)."""


def parse_event(family: str, type: str, fields: dict[str, XmlValue]) -> WecomEvent:
    model = MODELS.get((family, type), UnknownEvent)
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvalidEvent(f"{family}/{type}: {problems}") from None
