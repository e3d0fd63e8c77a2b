"""Rules, validated when saved (PROTOCOL.md §5.2 limits), and matched without I/O.

A rule is JSON (`match`, `content`) of one of four kinds. Each kind has a pydantic model
here; a rule that does not validate is never stored, so matching never meets a broken one.
"""

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REGEX_TIMEOUT_SECONDS = 0.05  # a pathological pattern must not stall the callback path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _bytes_at_most(limit: int, what: str) -> Any:
    def check(value: str) -> str:
        if len(value.encode()) > limit:
            raise ValueError(f"{what} is {len(value.encode())} bytes; WeCom allows {limit}")
        return value

    return check


# A template is text with placeholders written exactly `{customer_name}` (each kind has its
# own set), and `{{` / `}}` for literal braces, as str.format users expect. Nothing else
# that str.format understands is allowed: a format spec (`{customer_name:>300000000}`
# renders 300 million characters), a conversion, an attribute or index
# (`{customer_name.__class__}`), or a field nested in a spec. `render` does not use
# str.format at all, so a template stored before these checks cannot do harm either.
_BRACE = re.compile(r"\{\{|\}\}|[{}]")
_ANY_BRACE = re.compile(r"[{}]")
_FIELD_NAME_END = re.compile(r"[:!.\[{}]")
_FIELD_MARKS = {
    ":": "has a format spec",
    "!": "has a conversion",
    ".": "reads an attribute",
    "[": "reads an index",
}
_SHOWN_CHARS = 40  # a problem quotes at most this much of the template


@dataclass(frozen=True, slots=True)
class Placeholders:
    """The placeholders one kind's templates may use, each with the polite wording that
    stands in when its value is unknown (never "None" or a bare "{…}")."""

    fallbacks: Mapping[str, str]
    known: str  # as a problem lists them: "{customer_name}, {member_name}"
    filled: re.Pattern[str]  # `{{`, `}}` or one of these placeholders, written exactly

    @classmethod
    def of(cls, **fallbacks: str) -> "Placeholders":
        names = sorted(fallbacks)
        return cls(
            fallbacks=fallbacks,
            known=", ".join(f"{{{name}}}" for name in names),
            filled=re.compile(
                r"\{\{|\}\}|\{(" + "|".join(re.escape(name) for name in names) + r")\}"
            ),
        )


WELCOME_PLACEHOLDERS = Placeholders.of(customer_name="您好", member_name="我们")
# Sent to the member (and supervisors) about the customer: third person. The handler
# passes the member's userid when the name is unknown, so `{member_name}` is never blank.
CHURN_PLACEHOLDERS = Placeholders.of(
    customer_name="一位客户", member_name="成员", state="未知渠道", added_date="未知日期"
)


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _closing(text: str, start: int) -> int | None:
    """Where the field opened at `start` closes, counting nested braces as str.format does."""
    depth = 0
    for brace in _ANY_BRACE.finditer(text, start):
        depth += 1 if brace[0] == "{" else -1
        if depth == 0:
            return brace.start()
    return None


def _field_problem(field: str, placeholders: Placeholders) -> str | None:
    if field in placeholders.fallbacks:
        return None
    name = _FIELD_NAME_END.split(field, maxsplit=1)[0]
    mark = field[len(name) : len(name) + 1]
    shown = _shown(f"{{{field}}}")
    if name in placeholders.fallbacks and mark in _FIELD_MARKS:
        return f"placeholder {shown} {_FIELD_MARKS[mark]}; write {{{name}}}"
    return (
        f"unknown placeholder {shown}; known: {placeholders.known}"
        " (and {{ }} for literal braces)"
    )


def _template_problem(text: str, placeholders: Placeholders) -> str | None:
    """The first thing wrong with a template, in words; None when there is nothing."""
    at = 0
    while (brace := _BRACE.search(text, at)) is not None:
        at = brace.end()
        if brace[0] in ("{{", "}}"):
            continue
        if brace[0] == "}":
            return "a single } closes no placeholder; write }} for a literal brace"
        end = _closing(text, brace.start())
        if end is None:
            opened = _shown(text[brace.start() :])
            return f"a single {{ never closes ({opened}); write {{{{ for a literal brace"
        field = text[brace.start() + 1 : end]
        if (problem := _field_problem(field, placeholders)) is not None:
            return problem
        at = end + 1
    return None


def _template_check(placeholders: Placeholders) -> Any:
    def check(text: str) -> str:
        if (problem := _template_problem(text, placeholders)) is not None:
            raise ValueError(problem)
        return text

    return check


def render(
    template: str,
    values: Mapping[str, str | None],
    *,
    placeholders: Placeholders = WELCOME_PLACEHOLDERS,
) -> str:
    """Fill placeholders; an unknown value becomes its polite fallback.

    One pass of substitution, not str.format: whatever a stored template holds (even one
    saved before the template checks were strict), the text grows only by the values put
    in, nothing in it is evaluated, and a value that looks like a placeholder stays as it
    is."""
    filled = {name: values.get(name) or polite for name, polite in placeholders.fallbacks.items()}
    return placeholders.filled.sub(lambda m: filled[m[1]] if m[1] else m[0][0], template)


def _check_pattern(pattern: str) -> str:
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    return pattern


# welcome -------------------------------------------------------------------------------


class MediaAttachment(_Strict):
    """media_id: uploaded by someone else, valid 3 days. file: a path when the rule is
    saved; wecom-hub keeps the file (sha256 names it) and keeps a fresh upload of it."""

    msgtype: str
    media_id: str | None = None
    file: str | None = None
    sha256: str | None = None

    def _needs_source(self, *others: str | None) -> None:
        if not self.media_id and not self.file and not self.sha256 and not any(others):
            raise ValueError(f"{self.msgtype} needs media_id, file or sha256 (an uploaded file)")


class Image(MediaAttachment):
    msgtype: Literal["image"] = "image"
    pic_url: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "Image":
        self._needs_source(self.pic_url)
        return self


class Link(_Strict):
    msgtype: Literal["link"] = "link"
    title: Annotated[str, Field(min_length=1)]
    url: Annotated[str, Field(min_length=1)]
    desc: str = ""
    picurl: str = ""

    _title = field_validator("title")(_bytes_at_most(128, "link title"))
    _desc = field_validator("desc")(_bytes_at_most(512, "link desc"))


class Miniprogram(MediaAttachment):
    """Its cover image is the media: `pic_media_id` on the wire, or `file`."""

    msgtype: Literal["miniprogram"] = "miniprogram"
    title: Annotated[str, Field(min_length=1)]
    pic_media_id: str | None = None
    appid: Annotated[str, Field(min_length=1)]
    page: Annotated[str, Field(min_length=1)]

    _title = field_validator("title")(_bytes_at_most(64, "miniprogram title"))

    @model_validator(mode="after")
    def _one_source(self) -> "Miniprogram":
        self._needs_source(self.pic_media_id)
        return self


class Video(MediaAttachment):
    msgtype: Literal["video"] = "video"

    @model_validator(mode="after")
    def _one_source(self) -> "Video":
        self._needs_source()
        return self


class File(MediaAttachment):
    msgtype: Literal["file"] = "file"

    @model_validator(mode="after")
    def _one_source(self) -> "File":
        self._needs_source()
        return self


Attachment = Annotated[Image | Link | Miniprogram | Video | File, Field(discriminator="msgtype")]


State = Annotated[str, Field(min_length=1, max_length=30)]  # WeCom's state: 30 characters
MAX_STATES = 10_000  # channels linked to one rule


def _state_condition(
    state: str, pattern: str | None, mode: str, states: Collection[str] | None
) -> bool | None:
    """Whether `state` meets a rule's channel condition: `pattern` (in `mode`) or one of the
    exact `states` (a channel's state linked to the rule, app/channels/). None: the rule has
    no channel condition."""
    if pattern is None and not states:
        return None
    return (states is not None and state in states) or (
        pattern is not None and _state_matches(pattern, mode, state)
    )


def _state_score(pattern: str | None, mode: str, states: Collection[str] | None) -> int:
    """An exact channel beats a prefix, which beats a pattern; `states` are exact."""
    if states:
        return 30
    return {"exact": 30, "prefix": 20, "regex": 10}[mode] if pattern else 0


class WelcomeMatch(_Strict):
    """Every condition given must hold; none given: the default welcome. `states` are exact
    channel states OR-ed with `state` (a rule that channels are linked to)."""

    state: str | None = None
    state_mode: Literal["exact", "prefix", "regex"] = "exact"
    states: list[State] | None = Field(default=None, max_length=MAX_STATES)  # unset: not stored
    members: list[str] = Field(default_factory=list)
    hours: tuple[time, time] | None = None  # e.g. ["18:00", "09:00"]: across midnight is fine
    weekdays: list[Annotated[int, Field(ge=1, le=7)]] = Field(default_factory=list)  # 1 = Mon
    timezone: str = "Asia/Shanghai"
    # Set: a 微信客服 welcome for this KF account (enter_session); unset: a customer welcome.
    open_kfid: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> "WelcomeMatch":
        if self.state is not None and self.state_mode == "regex":
            _check_pattern(self.state)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {self.timezone!r}; an IANA name such as 'Asia/Shanghai'"
            ) from None
        return self

    def specificity(self) -> int:
        """The most specific matching rule wins: an exact channel beats a prefix, which beats
        a pattern; a member and a time window each add."""
        score = _state_score(self.state, self.state_mode, self.states)
        return score + (5 if self.members else 0) + (2 if self.hours or self.weekdays else 0)

    def matches(self, *, state: str, user_id: str, at: datetime) -> bool:
        if _state_condition(state, self.state, self.state_mode, self.states) is False:
            return False
        if self.members and user_id not in self.members:
            return False
        local = at.astimezone(ZoneInfo(self.timezone))
        if self.weekdays and local.isoweekday() not in self.weekdays:
            return False
        if self.hours:
            start, end = self.hours
            now = local.time()
            inside = start <= now < end if start <= end else now >= start or now < end
            if not inside:
                return False
        return True


class WelcomeContent(_Strict):
    text: str = ""
    attachments: list[Attachment] = Field(default_factory=list, max_length=9)

    _length = field_validator("text")(_bytes_at_most(4000, "welcome text"))
    _text = field_validator("text")(_template_check(WELCOME_PLACEHOLDERS))

    @model_validator(mode="after")
    def _not_empty(self) -> "WelcomeContent":
        if not self.text and not self.attachments:
            raise ValueError("a welcome needs text or attachments")
        return self


def _state_matches(pattern: str, mode: str, state: str) -> bool:
    if mode == "exact":
        return state == pattern
    if mode == "prefix":
        return state.startswith(pattern)
    return _regex_found(pattern, state)


def _keywords_match(keywords: list[str], mode: str, text: str) -> bool:
    text = text.strip()
    if mode == "exact":
        return text in keywords
    if mode == "contains":
        return any(keyword in text for keyword in keywords)
    return any(_regex_found(keyword, text) for keyword in keywords)


def _regex_found(pattern: str, text: str) -> bool:
    """A pattern that runs out of time does not match; it is one pattern's failure, so the
    caller goes on to the next keyword instead of giving up on the whole list."""
    try:
        # concurrent: the GIL is released while matching, so a pattern matched in a thread
        # (app/automations/replies.py) leaves the event loop's thread free.
        found = regex.search(pattern, text, timeout=REGEX_TIMEOUT_SECONDS, concurrent=True)
        return found is not None
    except TimeoutError:
        return False


Keyword = Annotated[str, Field(min_length=1)]
KeywordMode = Literal["exact", "contains", "regex"]


# tags ----------------------------------------------------------------------------------


class TagMatch(_Strict):
    """on channel: the customer arrived through a `state`; on group_join: joined one of
    `chat_ids` (none: any group); on keyword: wrote one of `keywords` to 微信客服 (to
    `open_kfid`, if given)."""

    on: Literal["channel", "group_join", "keyword"]
    state: str | None = None
    state_mode: Literal["exact", "prefix", "regex"] = "exact"
    # exact, OR-ed with `state`; unset: not stored
    states: list[State] | None = Field(default=None, max_length=MAX_STATES)
    chat_ids: list[str] = Field(default_factory=list)
    keywords: list[Keyword] = Field(default_factory=list)
    mode: KeywordMode = "contains"
    open_kfid: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> "TagMatch":
        if self.on == "channel" and not self.state and not self.states:
            raise ValueError("a channel tag rule needs a state (or states)")
        if self.on == "keyword" and not self.keywords:
            raise ValueError("a keyword tag rule needs keywords")
        if self.state is not None and self.state_mode == "regex":
            _check_pattern(self.state)
        if self.mode == "regex":
            for keyword in self.keywords:
                _check_pattern(keyword)
        return self

    def matches_channel(self, state: str) -> bool:
        return (
            self.on == "channel"
            and _state_condition(state, self.state, self.state_mode, self.states) is True
        )

    def matches_group(self, chat_id: str) -> bool:
        return self.on == "group_join" and (not self.chat_ids or chat_id in self.chat_ids)

    def matches_message(self, text: str, *, open_kfid: str) -> bool:
        return (
            self.on == "keyword"
            and self.open_kfid in (None, open_kfid)
            and _keywords_match(self.keywords, self.mode, text)
        )


class TagContent(_Strict):
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> "TagContent":
        if not self.add_tags and not self.remove_tags:
            raise ValueError("a tag rule needs add_tags or remove_tags")
        return self


# replies -------------------------------------------------------------------------------


class ReplyMatch(_Strict):
    keywords: list[Keyword] = Field(min_length=1)
    mode: KeywordMode = "exact"
    open_kfid: str | None = None  # only this 微信客服 account; unset: every app and account

    @model_validator(mode="after")
    def _valid(self) -> "ReplyMatch":
        if self.mode == "regex":
            for keyword in self.keywords:
                _check_pattern(keyword)
        return self

    def matches(self, text: str) -> bool:
        return _keywords_match(self.keywords, self.mode, text)


class ReplyContent(_Strict):
    text: Annotated[str, Field(min_length=1)]

    _length = field_validator("text")(_bytes_at_most(2048, "reply text"))


# churn alerts --------------------------------------------------------------------------

UserId = Annotated[str, Field(min_length=1, max_length=64)]  # WeCom's userid limit


class ChurnMatch(_Strict):
    """Which churns (a customer deleting a member) a rule alerts on. Every condition given
    must hold; none given: every churn of the rule's app (or of every app). `state` is the
    channel the customer had come through; `tags`: the follow had at least one of these tags
    when the customer left."""

    state: str | None = None
    state_mode: Literal["exact", "prefix", "regex"] = "exact"
    members: list[UserId] = Field(default_factory=list)
    tags: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid(self) -> "ChurnMatch":
        if self.state is not None and self.state_mode == "regex":
            _check_pattern(self.state)
        return self

    def specificity(self) -> int:
        """As a welcome's: an exact channel beats a prefix, which beats a pattern; a member
        adds more than a tag, which many customers of many members share."""
        score = {"exact": 30, "prefix": 20, "regex": 10}[self.state_mode] if self.state else 0
        return score + (5 if self.members else 0) + (2 if self.tags else 0)

    def matches(self, *, state: str | None, user_id: str, tag_ids: Collection[str]) -> bool:
        if self.state is not None and (
            state is None or not _state_matches(self.state, self.state_mode, state)
        ):
            return False
        if self.members and user_id not in self.members:
            return False
        return not self.tags or any(tag in tag_ids for tag in self.tags)


class ChurnContent(_Strict):
    """`text` goes to the member and to every userid in `notify` (a supervisor), as one
    app message (message/send: text at most 2048 bytes)."""

    text: Annotated[str, Field(min_length=1)]
    notify: list[UserId] = Field(default_factory=list, max_length=100)

    _length = field_validator("text")(_bytes_at_most(2048, "churn alert text"))
    _text = field_validator("text")(_template_check(CHURN_PLACEHOLDERS))


SCHEMAS: dict[str, tuple[type[_Strict], type[_Strict]]] = {
    "welcome": (WelcomeMatch, WelcomeContent),
    "tag": (TagMatch, TagContent),
    "reply": (ReplyMatch, ReplyContent),
    "churn": (ChurnMatch, ChurnContent),
}
