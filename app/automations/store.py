"""Saving and loading rules. Functions take a session and never commit."""

import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.automations.media import has_files, keep_files, schedule_uploads
from app.automations.rules import SCHEMAS, TagContent, WelcomeContent
from app.models import Rule, Tag, WecomApp


class RuleInvalid(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class LoadedRule:
    id: int
    name: str
    priority: int
    match: Any  # the kind's match model
    content: Any  # the kind's content model


def validate(kind: str, match: dict[str, Any], content: dict[str, Any]) -> tuple[Any, Any]:
    if kind not in SCHEMAS:
        raise RuleInvalid([f"kind must be one of {', '.join(SCHEMAS)}"])
    match_model, content_model = SCHEMAS[kind]
    problems, parsed = [], []
    for part, model, data in (("match", match_model, match), ("content", content_model, content)):
        try:
            parsed.append(model.model_validate(data))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                where = ".".join(str(x) for x in (part, *error["loc"]))
                problems.append(f"{where}: {error['msg']}")
    if problems:
        raise RuleInvalid(problems)
    return parsed[0], parsed[1]


async def add_rule(
    session: AsyncSession,
    *,
    kind: str,
    name: str,
    match: dict[str, Any],
    content: dict[str, Any],
    app_id: int | None = None,
    priority: int = 0,
) -> Rule:
    match_model, content_model = validate(kind, match, content)
    if isinstance(content_model, WelcomeContent):
        try:
            content_model = await keep_files(session, content_model)
        except ValueError as exc:
            raise RuleInvalid([f"content.attachments: {exc}"]) from None
    if isinstance(content_model, TagContent):
        await _check_tags_exist(
            session, app_id, [*content_model.add_tags, *content_model.remove_tags]
        )
    rule = Rule(
        kind=kind,
        name=name,
        app_id=app_id,
        priority=priority,
        match=match_model.model_dump(mode="json", exclude_none=True),
        content=content_model.model_dump(mode="json", exclude_none=True),
    )
    session.add(rule)
    await session.flush()
    if isinstance(content_model, WelcomeContent) and has_files(content_model):
        await schedule_uploads(session)  # uploaded before the first customer, if it can be
    return rule


async def _check_tags_exist(session: AsyncSession, app_id: int | None, tag_ids: list[str]) -> None:
    """Unknown tag ids are refused now, not discovered as 40068 at the first customer. The
    corp's tags are those `wecom-hub sync` (or tag events) brought in."""
    query = select(Tag.tag_id).where(Tag.tag_id.in_(tag_ids), Tag.deleted_at.is_(None))
    if app_id is not None:
        query = query.where(
            Tag.corp_id == select(WecomApp.corp_id).where(WecomApp.id == app_id).scalar_subquery()
        )
    known = set((await session.execute(query)).scalars())
    unknown = [tag for tag in tag_ids if tag not in known]
    if unknown:
        raise RuleInvalid([f"unknown tag id(s): {', '.join(unknown)} (run `wecom-hub sync`?)"])


async def enabled_rules(session: AsyncSession, kind: str, app_id: int) -> list[LoadedRule]:
    """The enabled rules of a kind that apply to an app (its own and the global ones),
    highest priority first."""
    match_model, content_model = SCHEMAS[kind]
    rows = await session.scalars(
        select(Rule)
        .where(Rule.kind == kind, Rule.enabled, or_(Rule.app_id.is_(None), Rule.app_id == app_id))
        .order_by(Rule.priority.desc(), Rule.id)
    )
    return [
        LoadedRule(
            r.id,
            r.name,
            r.priority,
            match_model.model_validate(r.match),
            content_model.model_validate(r.content),
        )
        for r in rows
    ]


class RuleCache:
    """Rules per (kind, app) for a few seconds: not one query per event, and a changed
    rule is in force after at most `ttl` seconds."""

    def __init__(self, ttl: float = 5.0) -> None:
        self._ttl = ttl
        self._cached: dict[tuple[str, int], tuple[float, list[LoadedRule]]] = {}

    async def get(self, session: AsyncSession, kind: str, app_id: int) -> list[LoadedRule]:
        key = (kind, app_id)
        hit = self._cached.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        rules = await enabled_rules(session, kind, app_id)
        self._cached[key] = (time.monotonic() + self._ttl, rules)
        return rules
