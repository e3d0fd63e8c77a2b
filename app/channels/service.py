"""Channels as the CLI and the HTTP API manage them: made at WeCom with a state wecom-hub
generates, welcomed and tagged by rules the channel owns, changed and removed at WeCom and
here together (docs/adr/0009-channels.md).

Refusals are AppErrors: `Invalid` naming each field (checked before WeCom is called), WeCom's
own errcodes as app/channels/wecom.py maps them, `NotFound` (`channel_not_found`).

Unlike the other services, `create_channel` takes a sessionmaker and commits: the channel is
reserved (its row and state committed) before add_contact_way, so that a way WeCom made is
never one we forgot; see `create_channel`. The others take a session and never commit; they
hold the channel's row lock while WeCom is called, so two changes of one channel take turns.
"""

import base64
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from sqlalchemy import Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.automations import store
from app.automations.store import RulePatch, RuleSpec
from app.channels import wecom
from app.crypto.at_rest import SecretBox
from app.errors import (
    Conflict,
    ErrorCode,
    FieldError,
    Invalid,
    NotFound,
    Unavailable,
    not_null,
)
from app.models import Channel, Rule, WecomApp
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError
from app.wecom_apps import app_by_slug, load_credentials

log = logging.getLogger(__name__)

Kind = Literal["contact_way", "join_way"]
MAX_MEMBERS = 100  # WeCom: 41041, departments expanded (which only WeCom can count)
MAX_REMARK = 30  # characters
MAX_CHATS = 5  # WeCom: 41091
STATE_PREFIX = "ch_"
STATE_RANDOM_BYTES = 10  # 16 base32 characters: 19 in all, WeCom allows 30

UserId = Annotated[str, Field(min_length=1, max_length=64)]
ChatId = Annotated[str, Field(min_length=1, max_length=128)]
TagId = Annotated[str, Field(min_length=1, max_length=128)]
PartyId = Annotated[int, Field(ge=1, le=2**31 - 1)]


def _at_most_members(value: list[str] | None) -> list[str] | None:
    if value is not None and len(set(value)) > MAX_MEMBERS:
        raise ValueError(
            f"{len(set(value))} members; a channel takes at most {MAX_MEMBERS} (WeCom's limit, "
            "departments expanded)"
        )
    return None if value is None else list(dict.fromkeys(value))


def _at_most_chats(value: list[str] | None) -> list[str] | None:
    if value is not None and len(set(value)) > MAX_CHATS:
        raise ValueError(f"{len(set(value))} groups; a join way links at most {MAX_CHATS}")
    return None if value is None else list(dict.fromkeys(value))


def _short_remark(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_REMARK:
        raise ValueError(f"{len(value)} characters; WeCom allows {MAX_REMARK}")
    return value


class WelcomeIn(BaseModel):
    """A welcome's content, as a welcome rule's (`text` with {customer_name} and
    {member_name}, up to 9 `attachments`, files by their upload's sha256)."""

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    attachments: list[dict[str, Any]] = Field(default_factory=list)


class ChannelSpec(BaseModel):
    """A new channel, as `channels add` and `POST /api/v1/channels` take it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "门店A",
                    "app": "shop",
                    "userids": ["zhangsan"],
                    "skip_verify": True,
                    "welcome": {"text": "你好 {customer_name}，欢迎光临门店A"},
                    "add_tags": ["etXXXXXXXXXXXXXXXXXXXXXXXXXXX"],
                },
                {
                    "name": "春季活动群",
                    "app": "shop",
                    "kind": "join_way",
                    "chat_ids": ["wrXXXXXXXXXXXXXXXXXXXXXXXXXXX"],
                },
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200, description="For people; not sent to WeCom.")
    app: str = Field(description="The slug of the app whose corp the code belongs to.")
    kind: Kind = Field(
        default="contact_way",
        description="contact_way: a 「联系我」 code that adds a member; join_way: a 加入群聊 code.",
    )
    userids: list[UserId] = Field(
        default_factory=list, description="contact_way: the members customers are added to."
    )
    party_ids: list[PartyId] = Field(
        default_factory=list,
        max_length=MAX_MEMBERS,
        description="contact_way: departments whose members take part.",
    )
    chat_ids: list[ChatId] = Field(
        default_factory=list, description="join_way: 1 to 5 customer groups."
    )
    skip_verify: StrictBool = Field(
        default=True, description="contact_way: customers are added without the member's OK."
    )
    remark: str = Field(default="", description="WeCom's remark, at most 30 characters.")
    welcome: WelcomeIn | None = Field(
        default=None, description="contact_way: makes a welcome rule for the channel's state."
    )
    welcome_rule_id: int | None = Field(
        default=None,
        ge=1,
        description="contact_way: an existing welcome rule that also welcomes this channel.",
    )
    add_tags: list[TagId] = Field(
        default_factory=list, description="contact_way: tags every customer of the channel gets."
    )

    _members = field_validator("userids")(_at_most_members)
    _chats = field_validator("chat_ids")(_at_most_chats)
    _remark = field_validator("remark")(_short_remark)


class ChannelPatch(BaseModel):
    """What may change of a channel. A field left out is kept; a member list given replaces
    the old one (WeCom's update overwrites it too)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"userids": ["zhangsan", "lisi"]}, {"remark": "秋季"}]},
    )

    name: str | None = Field(default=None, min_length=1, max_length=200)
    userids: list[UserId] | None = None
    party_ids: list[PartyId] | None = Field(default=None, max_length=MAX_MEMBERS)
    chat_ids: list[ChatId] | None = None
    skip_verify: StrictBool | None = None
    remark: str | None = None

    _members = field_validator("userids")(_at_most_members)
    _chats = field_validator("chat_ids")(_at_most_chats)
    _remark = field_validator("remark")(_short_remark)

    _not_null = field_validator(
        "name", "userids", "party_ids", "chat_ids", "skip_verify", "remark"
    )(not_null)


class ChannelView(BaseModel):
    """A channel as it is shown."""

    model_config = ConfigDict(frozen=True)

    id: int
    kind: Kind
    name: str
    app: str
    corp_id: str
    state: str | None = Field(description="What WeCom reports back with each customer.")
    status: Literal["pending", "active"] = Field(
        description="pending: reserved, WeCom's answer not yet stored."
    )
    source: Literal["api", "imported"]
    config_id: str | None
    qr_code: str | None = Field(description="WeCom's URL of the code's image.")
    userids: list[str]
    party_ids: list[int]
    chat_ids: list[str]
    skip_verify: bool
    remark: str
    welcome_rule_id: int | None
    tag_rule_id: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Wecom:
    """What a channel's WeCom calls need: the client, and the box that opens app secrets."""

    client: WecomClient
    box: SecretBox


def new_state() -> str:
    """`ch_` and 16 base32 characters: unique with overwhelming odds (80 bits), short enough
    for WeCom (30), and recognisably wecom-hub's among a corp's other states."""
    random = base64.b32encode(secrets.token_bytes(STATE_RANDOM_BYTES)).decode().lower()
    return STATE_PREFIX + random.rstrip("=")


def channel_view(channel: Channel, app: str) -> ChannelView:
    return ChannelView.model_validate(
        {
            **{
                name: getattr(channel, name)
                for name in ChannelView.model_fields
                if name not in ("app", "userids", "party_ids", "chat_ids")
            },
            "app": app,
            "userids": list(channel.userids or []),
            "party_ids": list(channel.party_ids or []),
            "chat_ids": list(channel.chat_ids or []),
        }
    )


def _with_slug() -> Select[Channel, str]:
    return select(Channel, WecomApp.slug).join(WecomApp, WecomApp.id == Channel.app_id)


async def _load(
    session: AsyncSession, channel_id: int, *, lock: bool = False
) -> tuple[Channel, str]:
    query = _with_slug().where(Channel.id == channel_id)
    if lock:
        query = query.with_for_update(of=Channel)
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise NotFound(f"no channel {channel_id}", code=ErrorCode.CHANNEL_NOT_FOUND)
    return row[0], row[1]


# checks ------------------------------------------------------------------------------


def _shape_problems(
    kind: str, *, userids: list[str], party_ids: list[int], chat_ids: list[str]
) -> list[FieldError]:
    """What a channel of `kind` must and must not have."""
    problems = []
    if kind == "contact_way":
        if not userids and not party_ids:
            problems.append(FieldError("userids", "a channel needs members (or party_ids)"))
        if chat_ids:
            problems.append(FieldError("chat_ids", "only a join_way links groups"))
    else:
        if not chat_ids:
            problems.append(FieldError("chat_ids", f"a join way links 1 to {MAX_CHATS} groups"))
        for field, given in (("userids", userids), ("party_ids", party_ids)):
            if given:
                problems.append(FieldError(field, "a join way adds no members; give chat_ids"))
    return problems


def _spec_problems(spec: ChannelSpec) -> list[FieldError]:
    problems = _shape_problems(
        spec.kind, userids=spec.userids, party_ids=spec.party_ids, chat_ids=spec.chat_ids
    )
    if spec.kind == "join_way":
        for field, given in (
            ("welcome", spec.welcome is not None),
            ("welcome_rule_id", spec.welcome_rule_id is not None),
            ("add_tags", bool(spec.add_tags)),
        ):
            if given:
                problems.append(FieldError(field, "only a contact_way welcomes and tags"))
    if spec.welcome is not None and spec.welcome_rule_id is not None:
        problems.append(FieldError("welcome_rule_id", "give welcome or welcome_rule_id, not both"))
    return problems


async def _linkable_rule(
    session: AsyncSession, rule_id: int, app_id: int
) -> tuple[Rule | None, list[FieldError]]:
    rule = await session.get(Rule, rule_id)
    if rule is None or rule.kind != "welcome":
        return None, [FieldError("welcome_rule_id", f"no welcome rule {rule_id}")]
    if rule.app_id not in (None, app_id):
        return None, [FieldError("welcome_rule_id", f"rule {rule_id} is another app's")]
    return rule, []


def _renamed(exc: Invalid, prefix: str) -> Invalid:
    """A rule's refusal in the channel request's terms: `content.text` is `welcome.text`,
    `content.add_tags` is `add_tags`."""
    errors = []
    for error in exc.errors:
        field = error.field.removeprefix("content.").removeprefix("content")
        errors.append(FieldError(f"{prefix}.{field}" if field else prefix, error.message))
    if prefix == "welcome":
        return Invalid(errors)
    return Invalid([FieldError(prefix, e.message) for e in errors])


def _rule_name(channel: Channel) -> str:
    return f"channel {channel.id}: {channel.name}"[:200]


# rules the channel owns or is linked to -----------------------------------------------


async def _attach_rules(
    session: AsyncSession, channel: Channel, spec: ChannelSpec, app: str, linked: Rule | None
) -> None:
    assert channel.state is not None
    if spec.welcome is not None:
        rule = await _own_rule(
            session,
            RuleSpec(
                kind="welcome",
                name=_rule_name(channel),
                app=app,
                match={"state": channel.state},
                content=spec.welcome.model_dump(exclude_defaults=True),
            ),
            field="welcome",
        )
        channel.welcome_rule_id, channel.welcome_rule_owned = rule.id, True
    elif linked is not None:
        await _link(session, linked, channel.state)
        channel.welcome_rule_id, channel.welcome_rule_owned = linked.id, False
    if spec.add_tags:
        rule = await _own_rule(
            session,
            RuleSpec(
                kind="tag",
                name=_rule_name(channel),
                app=app,
                match={"on": "channel", "state": channel.state},
                content={"add_tags": spec.add_tags},
            ),
            field="add_tags",
        )
        channel.tag_rule_id = rule.id


async def _own_rule(session: AsyncSession, spec: RuleSpec, *, field: str) -> store.RuleView:
    """A rule the channel owns, made as any rule is; its refusal in the channel request's
    terms (`field` is what the request called its content)."""
    try:
        return await store.create_rule(session, spec, media_dir=None, paths=False)
    except Invalid as exc:
        raise _renamed(exc, field) from None


def _has_channel_condition(match: dict[str, Any]) -> bool:
    return match.get("state") is not None or bool(match.get("states"))


async def _link(session: AsyncSession, rule: Rule, state: str) -> None:
    """The channel's state joins the rule's exact `states`. A rule with no channel condition
    already welcomes every channel: it is left as it is (adding one would narrow it)."""
    match = dict(rule.match)
    if not _has_channel_condition(match) or state in match.get("states", []):
        return
    match["states"] = [*match.get("states", []), state]
    await store.update_rule(session, rule.id, RulePatch(match=match), media_dir=None, paths=False)


async def _unlink(session: AsyncSession, rule_id: int, state: str) -> None:
    """The state leaves the rule's `states`, unless the rule would then have no channel
    condition left (and welcome every channel): the state of a removed way is harmless."""
    rule = await session.get(Rule, rule_id)
    if rule is None:
        return
    match = dict(rule.match)
    states = [s for s in match.get("states", []) if s != state]
    if states == match.get("states", []):
        return
    match["states"] = states
    if not states:
        del match["states"]
    if not _has_channel_condition(match):
        return
    await store.update_rule(session, rule.id, RulePatch(match=match), media_dir=None, paths=False)


async def _release(session: AsyncSession, channel: Channel) -> None:
    """The channel's rows here: the rules it owns, its state in a rule it was linked to,
    and itself."""
    owned = [channel.tag_rule_id]
    if channel.welcome_rule_owned:
        owned.append(channel.welcome_rule_id)
    elif channel.welcome_rule_id is not None and channel.state is not None:
        await _unlink(session, channel.welcome_rule_id, channel.state)
    await session.delete(channel)
    await session.flush()
    ids = [rule_id for rule_id in owned if rule_id is not None]
    if ids:
        await session.execute(delete(Rule).where(Rule.id.in_(ids)))


# create ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reserved:
    id: int
    kind: str
    state: str
    created_at: datetime
    resumed: bool
    credentials: Credentials
    userids: list[str]
    party_ids: list[int]
    chat_ids: list[str]
    remark: str
    skip_verify: bool


async def _reserve(session: AsyncSession, spec: ChannelSpec, request_key: str | None) -> Channel:
    """The channel's row, `pending` with a new state, and its rules: everything checked
    before WeCom is asked."""
    problems = _spec_problems(spec)
    try:
        app = await app_by_slug(session, spec.app)
    except Invalid as exc:
        raise Invalid([*exc.errors, *problems]) from None
    linked = None
    if spec.welcome_rule_id is not None and spec.kind == "contact_way":
        linked, found = await _linkable_rule(session, spec.welcome_rule_id, app.id)
        problems += found
    if problems:
        raise Invalid(problems)
    channel = Channel(
        app_id=app.id,
        corp_id=app.corp_id,
        kind=spec.kind,
        name=spec.name,
        state=new_state(),
        status="pending",
        source="api",
        userids=spec.userids,
        party_ids=spec.party_ids,
        chat_ids=spec.chat_ids,
        skip_verify=spec.skip_verify,
        remark=spec.remark,
        request_key=request_key,
    )
    session.add(channel)
    await session.flush()
    await _attach_rules(session, channel, spec, app.slug, linked)
    await session.flush()
    await session.refresh(channel)
    return channel


async def create_channel(
    sessionmaker: async_sessionmaker[AsyncSession],
    wecom_: Wecom,
    spec: ChannelSpec,
    *,
    request_key: str | None = None,
) -> ChannelView:
    """Three steps, so that nothing is lost or made twice:

    1. reserve: the row (`pending`, a new state) and its rules, committed;
    2. ask WeCom for the way, outside any transaction, once;
    3. store its config_id and qr_code (`active`), committed.

    WeCom refusing, or busy (-1, 45009: it made nothing), releases the reservation. No
    answer at all (a timeout, an HTTP 5xx) may hide a way WeCom made: we look for it by its
    state (list_contact_way, get_contact_way) and adopt it, or release if there is none; if
    even the lookup fails, the reservation stays `pending` and the answer is 503. A retry
    with the same `request_key` (API key, Idempotency-Key and body) resumes a pending one
    (looking first) or answers an active one; `wecom-hub sync` adopts a pending one's way
    by its state.
    """
    async with sessionmaker.begin() as session:
        channel = None
        if request_key is not None:
            channel = await session.scalar(
                select(Channel).where(Channel.request_key == request_key).with_for_update()
            )
        resumed = channel is not None
        if channel is None:
            channel = await _reserve(session, spec, request_key)
        if channel.status == "active":
            return await get_channel(session, channel.id)
        assert channel.state is not None
        reserved = _Reserved(
            id=channel.id,
            kind=channel.kind,
            state=channel.state,
            created_at=channel.created_at,
            resumed=resumed,
            credentials=await load_credentials(session, wecom_.box, channel.app_id),
            userids=list(channel.userids),
            party_ids=list(channel.party_ids),
            chat_ids=list(channel.chat_ids),
            remark=channel.remark,
            skip_verify=channel.skip_verify,
        )
    config_id, qr_code = await _make_way(sessionmaker, wecom_.client, reserved)
    async with sessionmaker.begin() as session:
        channel, _ = await _load(session, reserved.id, lock=True)
        channel.config_id, channel.qr_code, channel.status = config_id, qr_code, "active"
        await session.flush()
        return await get_channel(session, channel.id)


async def _make_way(
    sessionmaker: async_sessionmaker[AsyncSession], client: WecomClient, reserved: _Reserved
) -> tuple[str, str | None]:
    """(config_id, qr_code) of the reserved channel's way, made (or found) at WeCom."""
    credentials = reserved.credentials
    if reserved.kind == "join_way":
        try:
            config_id = await wecom.add_join_way(
                client,
                credentials,
                state=reserved.state,
                chat_ids=reserved.chat_ids,
                remark=reserved.remark,
            )
        except WecomApiError as exc:
            # WeCom lists no join ways: one made despite a lost answer cannot be found.
            await _forget(sessionmaker, reserved.id)
            raise wecom.refusal(exc) from None
        try:
            return config_id, await wecom.get_join_way_qr_code(client, credentials, config_id)
        except WecomApiError:  # the way exists; its code is read again when it is asked for
            log.warning("join way made, its code not read", extra={"channel_id": reserved.id})
            return config_id, None
    if reserved.resumed:
        found = await _look_for(client, reserved)
        if found is not None:
            return found.config_id, found.qr_code
    try:
        return await wecom.add_contact_way(
            client,
            credentials,
            state=reserved.state,
            userids=reserved.userids,
            party_ids=reserved.party_ids,
            remark=reserved.remark,
            skip_verify=reserved.skip_verify,
        )
    except WecomApiError as exc:
        if exc.errcode is not None:  # WeCom answered: it made nothing
            await _forget(sessionmaker, reserved.id)
            raise wecom.refusal(exc) from None
        lost = exc
    found = await _look_for(client, reserved)
    if found is None:
        await _forget(sessionmaker, reserved.id)
        raise wecom.refusal(lost)
    log.info("adopted a way whose answer was lost", extra={"channel_id": reserved.id})
    return found.config_id, found.qr_code


async def _look_for(client: WecomClient, reserved: _Reserved) -> wecom.Way | None:
    try:
        return await wecom.find_contact_way(
            client,
            reserved.credentials,
            state=reserved.state,
            since=reserved.created_at,
            now=datetime.now(UTC),
        )
    except (WecomApiError, wecom.LookupIncomplete) as exc:
        raise Unavailable(
            f"WeCom's answer to add_contact_way was lost, and looking for the way failed "
            f"too ({exc}); channel {reserved.id} stays pending: retry with the same "
            "Idempotency-Key, or `wecom-hub sync` adopts the way if WeCom made it",
            code=ErrorCode.WECOM_UNAVAILABLE,
            extra={"channel_id": reserved.id},
        ) from None


async def _forget(sessionmaker: async_sessionmaker[AsyncSession], channel_id: int) -> None:
    async with sessionmaker.begin() as session:
        channel = await session.get(Channel, channel_id, with_for_update=True)
        if channel is not None and channel.status == "pending":
            await _release(session, channel)


# read --------------------------------------------------------------------------------


async def get_channel(session: AsyncSession, channel_id: int) -> ChannelView:
    channel, slug = await _load(session, channel_id)
    return channel_view(channel, slug)


async def list_channels(
    session: AsyncSession,
    *,
    app: str | None = None,
    kind: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[ChannelView]:
    """Newest first; the next page is `after_id=` the last id of this one."""
    query = _with_slug().order_by(Channel.id.desc()).limit(limit)
    if app is not None:
        query = query.where(Channel.app_id == (await app_by_slug(session, app)).id)
    if kind is not None:
        query = query.where(Channel.kind == kind)
    if after_id is not None:
        query = query.where(Channel.id < after_id)
    return [channel_view(channel, slug) for channel, slug in await session.execute(query)]


# update, delete ---------------------------------------------------------------------


def _settled(channel: Channel) -> str:
    """The config_id of a channel WeCom has; a pending one cannot be changed yet."""
    if channel.status != "active" or channel.config_id is None:
        raise Conflict(
            f"channel {channel.id} is pending: WeCom's answer is not stored yet (retry its "
            "create with the same Idempotency-Key, or run `wecom-hub sync`)",
            code=ErrorCode.CHANNEL_PENDING,
        )
    return channel.config_id


async def update_channel(
    session: AsyncSession, wecom_: Wecom, channel_id: int, patch: ChannelPatch
) -> ChannelView:
    """WeCom first (members, remark, skip_verify, groups: sent whole, as WeCom overwrites
    them), then here; a refusal changes neither."""
    channel, slug = await _load(session, channel_id, lock=True)
    config_id = _settled(channel)
    given = patch.model_dump(exclude_unset=True)
    merged = {
        "userids": given.get("userids", list(channel.userids)),
        "party_ids": given.get("party_ids", list(channel.party_ids)),
        "chat_ids": given.get("chat_ids", list(channel.chat_ids)),
        "remark": given.get("remark", channel.remark),
        "skip_verify": given.get("skip_verify", channel.skip_verify),
    }
    problems = _shape_problems(
        channel.kind,
        userids=merged["userids"],
        party_ids=merged["party_ids"],
        chat_ids=merged["chat_ids"],
    )
    if problems:
        raise Invalid(problems)
    if any(merged[name] != getattr(channel, name) for name in merged):
        credentials = await load_credentials(session, wecom_.box, channel.app_id)
        try:
            if channel.kind == "contact_way":
                await wecom.update_contact_way(
                    wecom_.client,
                    credentials,
                    config_id=config_id,
                    state=channel.state,
                    userids=merged["userids"],
                    party_ids=merged["party_ids"],
                    remark=merged["remark"],
                    skip_verify=merged["skip_verify"],
                )
            else:
                await wecom.update_join_way(
                    wecom_.client,
                    credentials,
                    config_id=config_id,
                    state=channel.state,
                    chat_ids=merged["chat_ids"],
                    remark=merged["remark"],
                )
        except WecomApiError as exc:
            raise wecom.refusal(exc) from None
    for name, value in merged.items():
        setattr(channel, name, value)
    if "name" in given:
        channel.name = given["name"]
    await session.flush()
    await session.refresh(channel)
    return channel_view(channel, slug)


async def delete_channel(session: AsyncSession, wecom_: Wecom, channel_id: int) -> None:
    """The way at WeCom (one WeCom no longer knows, wecom.GONE, is gone already), then the
    channel and the rules it owns here. A pending channel has no way we know of: it is
    released here only (if WeCom made its way after all, `sync` imports it)."""
    channel, _ = await _load(session, channel_id, lock=True)
    if channel.config_id is not None:
        credentials = await load_credentials(session, wecom_.box, channel.app_id)
        remove = wecom.del_contact_way if channel.kind == "contact_way" else wecom.del_join_way
        try:
            await remove(wecom_.client, credentials, channel.config_id)
        except WecomApiError as exc:
            if exc.errcode not in wecom.GONE:
                raise wecom.refusal(exc) from None
    await _release(session, channel)


async def qr_source(
    session: AsyncSession, wecom_: Wecom, channel_id: int
) -> tuple[str, bytes | None]:
    """The channel's code: its URL, and its image if it was fetched before. A join way
    whose code was not read when it was made is read now."""
    channel, _ = await _load(session, channel_id)
    config_id = _settled(channel)
    png = await session.scalar(select(Channel.qr_png).where(Channel.id == channel_id))
    if png is not None and channel.qr_code:
        return channel.qr_code, png
    if not channel.qr_code and channel.kind == "join_way":
        credentials = await load_credentials(session, wecom_.box, channel.app_id)
        try:
            channel.qr_code = await wecom.get_join_way_qr_code(
                wecom_.client, credentials, config_id
            )
        except WecomApiError as exc:
            raise wecom.refusal(exc) from None
    if not channel.qr_code:
        raise Conflict(
            f"channel {channel_id} has no QR code (a mini-program way, scene 1)",
            code=ErrorCode.QR_CODE_UNAVAILABLE,
        )
    await session.flush()
    return channel.qr_code, None


async def keep_qr_png(session: AsyncSession, channel_id: int, url: str, png: bytes) -> None:
    """Cache the image fetched from `url`, unless the channel's code changed meanwhile."""
    channel = await session.get(Channel, channel_id, with_for_update=True)
    if channel is not None and channel.qr_code == url:
        channel.qr_png, channel.qr_fetched_at = png, datetime.now(UTC)
        await session.flush()


# sync --------------------------------------------------------------------------------


async def import_contact_ways(
    session: AsyncSession, *, app_id: int, corp_id: str, ways: list[wecom.Way]
) -> None:
    """Ways as WeCom lists them (`wecom-hub sync`), made channels: a known config_id is
    brought up to date (members, remark, code); a pending channel whose state the way
    carries adopts it (its add_contact_way answer was lost); any other way becomes an
    `imported` channel, with its state unless that is empty or another channel's."""
    for way in ways:
        kind = Channel.kind == "contact_way"
        channel = await session.scalar(
            select(Channel)
            .where(Channel.corp_id == corp_id, kind, Channel.config_id == way.config_id)
            .with_for_update()
        )
        if channel is None and way.state:
            channel = await session.scalar(
                select(Channel)
                .where(
                    Channel.corp_id == corp_id,
                    kind,
                    Channel.state == way.state,
                    Channel.status == "pending",
                )
                .with_for_update()
            )
        if channel is None:
            state: str | None = way.state or None
            taken = state is not None and (
                await session.scalar(
                    select(Channel.id).where(Channel.corp_id == corp_id, Channel.state == state)
                )
                is not None
            )
            channel = Channel(
                app_id=app_id,
                corp_id=corp_id,
                kind="contact_way",
                name=way.remark or f"imported {way.config_id[:8]}",
                state=None if taken else state,
                source="imported",
            )
            session.add(channel)
        if channel.qr_code != way.qr_code:
            channel.qr_code, channel.qr_png, channel.qr_fetched_at = way.qr_code, None, None
        channel.config_id, channel.status = way.config_id, "active"
        channel.userids, channel.party_ids = way.userids, way.party_ids
        channel.remark, channel.skip_verify = way.remark, way.skip_verify
        await session.flush()
