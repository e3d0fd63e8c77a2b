"""Rules as the CLI and the HTTP API manage them, and as the processor loads them.

One place decides what a valid rule is: `create_rule` and `update_rule` check the kind's
match and content (app/automations/rules.py), the app, the tag ids and the enabled name,
keep attachment files, and refuse with `Invalid` (each problem at its field path, e.g.
`content.attachments.0.file`), `NotFound` or `Conflict`. Functions take a session and
never commit: the caller owns the transaction.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.automations.media import (
    AttachmentRefused,
    has_files,
    keep_files,
    schedule_uploads,
    upload_kind,
)
from app.automations.rules import (
    SCHEMAS,
    ChurnMatch,
    MediaAttachment,
    TagContent,
    WelcomeContent,
)
from app.errors import Conflict, ErrorCode, FieldError, Invalid, NotFound, field_errors
from app.models import MediaFile, Rule, Tag, WecomApp
from app.wecom_apps import app_by_slug

log = logging.getLogger(__name__)

RuleKind = Literal["welcome", "tag", "reply", "churn"]
# A welcome attachment is a union tagged by msgtype; pydantic puts the tag in an error's
# path (`attachments.0.image.file`), which names nothing in the request: it is dropped.
_ATTACHMENT_TAGS = frozenset({"image", "link", "miniprogram", "video", "file"})


class RuleSpec(BaseModel):
    """A whole rule, as `rules add` and `POST /api/v1/rules` take it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "welcome",
                    "name": "stores",
                    "app": "shop",
                    "priority": 0,
                    "enabled": True,
                    "match": {"state": "store_", "state_mode": "prefix"},
                    "content": {"text": "你好 {customer_name}，欢迎光临"},
                },
                {
                    "kind": "tag",
                    "name": "pricing",
                    "app": None,
                    "match": {"on": "keyword", "keywords": ["价格", "多少钱"]},
                    "content": {"add_tags": ["etXXXX"]},
                },
                {
                    "kind": "churn",
                    "name": "store churn",
                    "app": "shop",
                    "match": {"state": "store_", "state_mode": "prefix"},
                    "content": {
                        "text": "{customer_name}（{state}，{added_date} 添加）删除了{member_name}",
                        "notify": ["supervisor"],
                    },
                },
            ]
        },
    )

    kind: RuleKind
    name: str = Field(min_length=1, max_length=200)
    app: str | None = Field(default=None, description="An app's slug; null: every app.")
    priority: int = Field(default=0, description="Higher wins among equally specific rules.")
    enabled: StrictBool = True
    match: dict[str, Any] = Field(description="The kind's conditions; {} matches everything.")
    content: dict[str, Any] = Field(description="What the rule sends or does.")


class RulePatch(BaseModel):
    """The fields of a rule to change; the kind never changes. A field left out is kept;
    `app: null` makes the rule apply to every app; match and content replace the old ones
    whole. The merged rule is checked exactly like a new one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"enabled": False},
                {"name": "stores (autumn)", "content": {"text": "秋季欢迎 {customer_name}"}},
            ]
        },
    )

    name: str | None = None
    app: str | None = None
    priority: int | None = None
    enabled: StrictBool | None = None
    match: dict[str, Any] | None = None
    content: dict[str, Any] | None = None


class RuleView(BaseModel):
    """A stored rule as it is shown: its app by slug (null: every app)."""

    model_config = ConfigDict(frozen=True)

    id: int
    kind: RuleKind
    name: str
    app: str | None
    priority: int
    enabled: bool
    match: dict[str, Any]
    content: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def rule_spec(data: dict[str, Any]) -> RuleSpec:
    """A RuleSpec from JSON-like data, or Invalid naming each field."""
    try:
        return RuleSpec.model_validate(data)
    except ValidationError as exc:
        raise Invalid(field_errors(exc)) from None


def rule_patch(data: dict[str, Any]) -> RulePatch:
    """A RulePatch from JSON-like data, or Invalid naming each field."""
    try:
        return RulePatch.model_validate(data)
    except ValidationError as exc:
        raise Invalid(
            [
                FieldError("kind", "cannot change; add a rule of the other kind instead")
                if error.field == "kind"
                else error
                for error in field_errors(exc)
            ]
        ) from None


@dataclass(frozen=True, slots=True)
class LoadedRule:
    id: int
    name: str
    priority: int
    match: Any  # the kind's match model
    content: Any  # the kind's content model


def _path(part: str, loc: tuple[int | str, ...]) -> str:
    if len(loc) >= 3 and loc[0] == "attachments" and loc[2] in _ATTACHMENT_TAGS:
        loc = (*loc[:2], *loc[3:])
    return ".".join(str(x) for x in (part, *loc))


def validate(kind: str, match: dict[str, Any], content: dict[str, Any]) -> tuple[Any, Any]:
    """The kind's match and content models, or Invalid naming every problem in both."""
    if kind not in SCHEMAS:
        raise Invalid([FieldError("kind", f"must be one of {', '.join(SCHEMAS)}")])
    match_model, content_model = SCHEMAS[kind]
    problems, parsed = [], []
    for part, model, data in (("match", match_model, match), ("content", content_model, content)):
        try:
            parsed.append(model.model_validate(data))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(FieldError(_path(part, error["loc"]), message))
    if problems:
        raise Invalid(problems)
    return parsed[0], parsed[1]


async def _app_id(session: AsyncSession, slug: str | None) -> tuple[int | None, list[FieldError]]:
    """The app's id, held until the transaction ends (remove_app waits, then sees the
    rule), or the `app` field's problem."""
    if slug is None:
        return None, []
    try:
        return (await app_by_slug(session, slug, lock=True)).id, []
    except Invalid as exc:
        return None, exc.errors


async def _kept_app(
    session: AsyncSession, app_id: int | None, slug: str | None
) -> list[FieldError]:
    """An enabled rule's app must still be there: a rule of a removed app would never
    apply, not even once its slug is another app's (rules name apps by id). Held as
    `_app_id` holds it."""
    if app_id is None:
        return []
    query = (
        select(WecomApp.id)
        .where(WecomApp.id == app_id, WecomApp.removed_at.is_(None))
        .with_for_update(read=True, key_share=True)
    )
    if (await session.execute(query)).scalar_one_or_none() is not None:
        return []
    return [
        FieldError(
            "app",
            f"app {slug!r} was removed: name the app this rule is for "
            "(--app SLUG; null: every app)",
        )
    ]


def _named_tags(match: Any, content: Any) -> dict[str, list[str]]:
    """The tag ids a rule names, by field path."""
    if isinstance(content, TagContent):
        return {"content.add_tags": content.add_tags, "content.remove_tags": content.remove_tags}
    if isinstance(match, ChurnMatch) and match.tags:
        return {"match.tags": match.tags}
    return {}


async def _unknown_tags(
    session: AsyncSession, app_id: int | None, named: dict[str, list[str]]
) -> list[FieldError]:
    """Unknown tag ids are refused now, not discovered as 40068 at the first customer (or,
    in a churn rule's match, as a rule that silently never fires). The corp's tags are those
    `wecom-hub sync` (or tag events) brought in."""
    wanted = [tag for tags in named.values() for tag in tags]
    query = select(Tag.tag_id).where(Tag.tag_id.in_(wanted), Tag.deleted_at.is_(None))
    if app_id is not None:
        query = query.where(
            Tag.corp_id == select(WecomApp.corp_id).where(WecomApp.id == app_id).scalar_subquery()
        )
    known = set((await session.execute(query)).scalars())
    problems = []
    for field, tags in named.items():
        unknown = [tag for tag in tags if tag not in known]
        if unknown:
            problems.append(
                FieldError(
                    field,
                    f"unknown tag id(s): {', '.join(unknown)} (run `wecom-hub sync`?)",
                )
            )
    return problems


async def _unknown_files(session: AsyncSession, content: WelcomeContent) -> list[FieldError]:
    """A rule names kept files by sha256 (uploaded over the API, or a stored rule coming back
    through an update). One that names no kept file would never be uploaded, and one of
    another kind (a 20 MB `file` as an `image`) would fail at WeCom on every welcome: both
    are refused."""
    named = {
        i: a
        for i, a in enumerate(content.attachments)
        if isinstance(a, MediaAttachment) and a.sha256
    }
    query = select(MediaFile.sha256, MediaFile.kind).where(
        MediaFile.sha256.in_([a.sha256 for a in named.values()])
    )
    kept = {row.sha256: row.kind for row in await session.execute(query)} if named else {}
    problems = []
    for i, attachment in named.items():
        kind, wanted = kept.get(attachment.sha256 or ""), upload_kind(attachment)
        if kind is None:
            problems.append(
                FieldError(
                    f"content.attachments.{i}.sha256",
                    "names no kept file; upload it (POST /api/v1/media) or give its file",
                )
            )
        elif kind != wanted:
            problems.append(
                FieldError(
                    f"content.attachments.{i}.sha256",
                    f"names an upload of kind {kind}; a {attachment.msgtype} attachment"
                    f" needs kind {wanted}",
                )
            )
    return problems


async def _check_name_free(
    session: AsyncSession, spec: RuleSpec, app_id: int | None, rule_id: int | None
) -> None:
    """Two enabled rules of one kind and app with one name could not be told apart in a list
    or an action's payload. There is no unique index (a disabled rule may keep the name), so
    a transaction lock on the name makes the check and the write one step across replicas."""
    key = f"rule:{spec.kind}:{app_id}:{spec.name}"
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))
    query = select(Rule.id).where(
        Rule.kind == spec.kind,
        Rule.name == spec.name,
        Rule.enabled,
        Rule.app_id.is_not_distinct_from(app_id),
    )
    if rule_id is not None:
        query = query.where(Rule.id != rule_id)
    other = (await session.execute(query.limit(1))).scalar_one_or_none()
    if other is not None:
        raise Conflict(
            f"enabled {spec.kind} rule {other} of {spec.app or 'all apps'} is named "
            f"{spec.name!r}; rename or disable one",
            code=ErrorCode.RULE_NAME_TAKEN,
            extra={"rule_id": other},
        )


async def _checked(
    session: AsyncSession,
    spec: RuleSpec,
    *,
    app_id: int | None,
    problems: list[FieldError],
    media_dir: Path | None,
    paths: bool,
    rule_id: int | None = None,
) -> tuple[Any, Any]:
    """The rule's match and content models, its files kept, once nothing is wrong with it.
    `problems` are those already found with its app."""
    problems = list(problems)
    try:
        match_model, content_model = validate(spec.kind, spec.match, spec.content)
    except Invalid as exc:
        raise Invalid([*problems, *exc.errors]) from None
    named_tags = _named_tags(match_model, content_model)
    if named_tags and not problems:
        problems += await _unknown_tags(session, app_id, named_tags)
    if isinstance(content_model, WelcomeContent):
        problems += await _unknown_files(session, content_model)
    if problems:
        raise Invalid(problems)
    if spec.enabled:
        await _check_name_free(session, spec, app_id, rule_id)
    if isinstance(content_model, WelcomeContent):
        try:
            content_model = await keep_files(
                session, content_model, media_dir=media_dir, paths=paths
            )
        except AttachmentRefused as exc:
            raise Invalid(
                [FieldError(f"content.attachments.{exc.index}.file", exc.message)]
            ) from None
    return match_model, content_model


def _view(rule: Rule, app: str | None) -> RuleView:
    return RuleView(
        id=rule.id,
        kind=cast(RuleKind, rule.kind),  # only these are ever stored
        name=rule.name,
        app=app,
        priority=rule.priority,
        enabled=rule.enabled,
        match=rule.match,
        content=rule.content,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
    )


def _spec(rule: Rule, app: str | None) -> RuleSpec:
    return RuleSpec.model_validate(_view(rule, app).model_dump(include=set(RuleSpec.model_fields)))


def _with_slug() -> Select[Rule, str]:
    """Rules with the slug of their app (null: every app: an outer join)."""
    return select(Rule, WecomApp.slug).outerjoin(WecomApp, WecomApp.id == Rule.app_id)


async def _load(session: AsyncSession, rule_id: int) -> tuple[Rule, str | None]:
    row = (await session.execute(_with_slug().where(Rule.id == rule_id))).one_or_none()
    if row is None:
        raise NotFound(f"no rule {rule_id}", code=ErrorCode.RULE_NOT_FOUND)
    return row[0], row[1]


async def _saved(
    session: AsyncSession, rule: Rule, app: str | None, content: Any, *, uploads: bool
) -> RuleView:
    """Flush, and enqueue the uploads of an enabled welcome's files with it, so they are
    at WeCom before its first customer if they can be."""
    await session.flush()
    await session.refresh(rule)  # created_at, updated_at: set by Postgres
    if uploads and isinstance(content, WelcomeContent) and has_files(content):
        await schedule_uploads(session)
    return _view(rule, app)


def _store(rule: Rule, spec: RuleSpec, app_id: int | None, match: Any, content: Any) -> None:
    rule.name = spec.name
    rule.app_id = app_id
    rule.priority = spec.priority
    rule.enabled = spec.enabled
    rule.match = match.model_dump(mode="json", exclude_none=True)
    rule.content = content.model_dump(mode="json", exclude_none=True)


async def create_rule(
    session: AsyncSession, spec: RuleSpec, *, media_dir: Path | None, paths: bool = True
) -> RuleView:
    """Attachment files are read from `media_dir` only; over the API (`paths=False`) a rule
    names no path at all, only files uploaded before."""
    app_id, problems = await _app_id(session, spec.app)
    match, content = await _checked(
        session, spec, app_id=app_id, problems=problems, media_dir=media_dir, paths=paths
    )
    rule = Rule(kind=spec.kind)
    _store(rule, spec, app_id, match, content)
    session.add(rule)
    return await _saved(session, rule, spec.app, content, uploads=spec.enabled)


async def list_rules(
    session: AsyncSession,
    *,
    kind: str | None = None,
    app: str | None = None,
    enabled: bool | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[RuleView]:
    """Newest first, a page at a time: the next page is `after_id=` the last id of this one
    (ids lower than it), which stays right while rules are added or removed."""
    query = _with_slug().order_by(Rule.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(Rule.kind == kind)
    if app is not None:
        app_id, problems = await _app_id(session, app)
        if problems:
            raise Invalid(problems)
        query = query.where(Rule.app_id == app_id)
    if enabled is not None:
        query = query.where(Rule.enabled.is_(enabled))
    if after_id is not None:
        query = query.where(Rule.id < after_id)
    return [_view(rule, slug) for rule, slug in await session.execute(query)]


async def get_rule(session: AsyncSession, rule_id: int) -> RuleView:
    return _view(*await _load(session, rule_id))


async def update_rule(
    session: AsyncSession,
    rule_id: int,
    patch: RulePatch,
    *,
    media_dir: Path | None,
    paths: bool = True,
) -> RuleView:
    rule, slug = await _load(session, rule_id)
    spec = rule_spec(_spec(rule, slug).model_dump() | patch.model_dump(exclude_unset=True))
    if "app" in patch.model_fields_set:
        app_id, problems = await _app_id(session, spec.app)
    else:  # kept as it is, even if its app was removed and the slug is now another app's
        app_id = rule.app_id
        problems = await _kept_app(session, app_id, slug) if spec.enabled else []
    match, content = await _checked(
        session,
        spec,
        app_id=app_id,
        problems=problems,
        media_dir=media_dir,
        paths=paths,
        rule_id=rule_id,
    )
    _store(rule, spec, app_id, match, content)
    return await _saved(session, rule, spec.app, content, uploads=spec.enabled)


async def set_enabled(session: AsyncSession, rule_id: int, enabled: bool) -> RuleView:
    """Enabling checks the name again: another rule may have taken it meanwhile."""
    rule, slug = await _load(session, rule_id)
    if enabled and not rule.enabled:
        if problems := await _kept_app(session, rule.app_id, slug):
            raise Invalid(problems)
        await _check_name_free(session, _spec(rule, slug), rule.app_id, rule_id)
    rule.enabled = enabled
    content = SCHEMAS[rule.kind][1].model_validate(rule.content)
    return await _saved(session, rule, slug, content, uploads=enabled)


async def delete_rule(session: AsyncSession, rule_id: int) -> None:
    """Actions the rule caused keep its name in their payload."""
    rule, _ = await _load(session, rule_id)
    await session.delete(rule)
    await session.flush()


async def enabled_rules(session: AsyncSession, kind: str, app_id: int) -> list[LoadedRule]:
    """The enabled rules of a kind that apply to an app (its own and the global ones),
    highest priority first. A stored rule that no longer validates (saved before a check
    was added, e.g. a template with a format spec) is left out with a warning naming it,
    rather than failing every event of the app."""
    match_model, content_model = SCHEMAS[kind]
    rows = await session.scalars(
        select(Rule)
        .where(Rule.kind == kind, Rule.enabled, or_(Rule.app_id.is_(None), Rule.app_id == app_id))
        .order_by(Rule.priority.desc(), Rule.id)
    )
    loaded = []
    for r in rows:
        try:
            match, content = (
                match_model.model_validate(r.match),
                content_model.model_validate(r.content),
            )
        except ValidationError as exc:
            log.warning(
                "rule left out: it no longer validates; edit it with `wecom-hub rules update`",
                extra={"rule_id": r.id, "rule": r.name, "error": str(exc)[:300]},
            )
            continue
        loaded.append(LoadedRule(r.id, r.name, r.priority, match, content))
    return loaded


class RuleCache:
    """Rules per (kind, app): not one query per event. A rule changed anywhere is in force
    for the next event: `changed` is set by the processor's LISTEN on RULES_CHANNEL
    (app/notify.py), and the cache is dropped. A channel made over the API and scanned a
    second later is welcomed by its rule. `ttl` bounds the staleness when notifications are
    lost (a dropped LISTEN connection: the listener sets `changed` again on reconnecting)."""

    def __init__(self, ttl: float = 5.0) -> None:
        self._ttl = ttl
        self._cached: dict[tuple[str, int], tuple[float, list[LoadedRule]]] = {}
        self.changed = asyncio.Event()

    async def get(self, session: AsyncSession, kind: str, app_id: int) -> list[LoadedRule]:
        if self.changed.is_set():
            self.changed.clear()
            self._cached.clear()
        key = (kind, app_id)
        hit = self._cached.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        rules = await enabled_rules(session, kind, app_id)
        self._cached[key] = (time.monotonic() + self._ttl, rules)
        return rules
