"""The rule services the CLI and the HTTP API share, called directly on the test database:
what they store, how they page, and how each refusal names its field."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.automations.store import (
    RulePatch,
    RuleSpec,
    RuleView,
    create_rule,
    delete_rule,
    get_rule,
    list_rules,
    rule_patch,
    rule_spec,
    set_enabled,
    update_rule,
)
from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.errors import Conflict, Invalid, NotFound
from app.wecom_apps import remove_app
from tests.conftest import random_app, register

WELCOME: dict[str, Any] = {"kind": "welcome", "match": {}, "content": {"text": "你好"}}


@pytest.fixture
async def sessions(
    settings: Settings, db: asyncpg.Connection
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    assert settings.database_url
    engine = create_engine(settings.database_url, settings, pool_size=1)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def shop(settings: Settings, db: asyncpg.Connection) -> str:
    """An app, slug `shop`, whose corp has one known tag, `etKNOWN`."""
    app = random_app("shop")
    await register(settings, app)
    await db.execute(
        "INSERT INTO tags (corp_id, tag_id, name) VALUES ($1, 'etKNOWN', 'vip')", app.corp_id
    )
    return app.slug


async def create(
    sessions: async_sessionmaker[AsyncSession], media_dir: Path | None = None, **fields: Any
) -> RuleView:
    async with sessions.begin() as session:
        return await create_rule(session, rule_spec(WELCOME | fields), media_dir=media_dir)


async def patch(
    sessions: async_sessionmaker[AsyncSession], rule_id: int, **fields: Any
) -> RuleView:
    async with sessions.begin() as session:
        return await update_rule(session, rule_id, rule_patch(fields), media_dir=None)


async def refused(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, **fields: Any
) -> dict[str, str]:
    """The fields a refused new rule is refused for, with their messages; nothing stored."""
    with pytest.raises(Invalid) as invalid:
        await create(sessions, **fields)
    assert await db.fetchval("SELECT count(*) FROM rules") == 0
    return {error.field: error.message for error in invalid.value.errors}


async def test_a_rule_is_created_read_changed_and_deleted(
    sessions: async_sessionmaker[AsyncSession], shop: str, db: asyncpg.Connection
) -> None:
    created = await create(
        sessions,
        name="stores",
        app=shop,
        priority=3,
        match={"state": "store_", "state_mode": "prefix"},
        content={"text": "欢迎 {customer_name}"},
    )
    assert (created.kind, created.name, created.app, created.priority, created.enabled) == (
        "welcome",
        "stores",
        "shop",
        3,
        True,
    )
    assert created.match == {"state": "store_", "state_mode": "prefix"} | {
        "members": [],
        "weekdays": [],
        "timezone": "Asia/Shanghai",
    }
    async with sessions.begin() as session:
        assert await get_rule(session, created.id) == created

    changed = await patch(sessions, created.id, app=None, content={"text": "秋季欢迎"})
    assert (changed.app, changed.name) == (None, "stores")
    assert changed.content == {"text": "秋季欢迎", "attachments": []}
    assert changed.match == created.match and changed.created_at == created.created_at

    async with sessions.begin() as session:
        assert (await set_enabled(session, created.id, False)).enabled is False
    async with sessions.begin() as session:
        assert (await get_rule(session, created.id)).enabled is False
        assert (await set_enabled(session, created.id, True)).enabled is True

    async with sessions.begin() as session:
        await delete_rule(session, created.id)
    assert await db.fetchval("SELECT count(*) FROM rules") == 0


async def test_an_update_keeps_what_it_does_not_name_and_is_checked_like_a_new_rule(
    sessions: async_sessionmaker[AsyncSession], shop: str
) -> None:
    created = await create(sessions, name="shop welcome", app=shop)
    assert (await patch(sessions, created.id, priority=7)).app == "shop"
    with pytest.raises(Invalid) as invalid:
        await patch(sessions, created.id, name="", content={"text": "hi {nickname}"})
    assert {e.field for e in invalid.value.errors} == {"name"}  # the spec first, then content
    with pytest.raises(Invalid) as invalid:
        await patch(sessions, created.id, content={"text": "hi {nickname}"})
    assert [e.field for e in invalid.value.errors] == ["content.text"]
    async with sessions.begin() as session:
        kept = await get_rule(session, created.id)
    assert (kept.content, kept.priority) == ({"text": "你好", "attachments": []}, 7)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"kind": "nonsense"}, "kind", "'welcome', 'tag', 'reply' or 'churn'"),
        ({"name": ""}, "name", "at least 1 character"),
        ({"name": "x" * 201}, "name", "at most 200 characters"),
        ({"match": {"hours": "18:00"}}, "match.hours", "valid tuple"),
        ({"match": {"state": "(", "state_mode": "regex"}}, "match", "bad regular expression"),
        ({"match": {"colour": "red"}}, "match.colour", "Extra inputs"),
        ({"content": {"text": "hi {nickname}"}}, "content.text", "unknown placeholder"),
        (
            {"content": {"attachments": [{"msgtype": "image", "file": 3}]}},
            "content.attachments.0.file",
            "valid string",
        ),
        (
            {"content": {"text": "x", "attachments": [{"msgtype": "link", "url": "u"}] * 2}},
            "content.attachments.1.title",
            "Field required",
        ),
        (
            {"content": {"attachments": [{"msgtype": "video"}]}},
            "content.attachments.0",
            "video needs media_id, file or sha256",
        ),
        (
            {"content": {"attachments": [{"msgtype": "image", "file": "poster.png"}]}},
            "content.attachments.0.file",
            "WECOM_HUB_MEDIA_DIR",
        ),
        (
            {
                "content": {
                    "attachments": [{"msgtype": "file", "file": "a.pdf", "sha256": "0" * 64}]
                }
            },
            "content.attachments.0.sha256",
            "names no kept file",
        ),
        ({"app": "nosuch"}, "app", "no app 'nosuch'"),
        (
            {"kind": "tag", "match": {"on": "group_join"}, "content": {"add_tags": ["etNONE"]}},
            "content.add_tags",
            "unknown tag id(s): etNONE",
        ),
        (
            {"kind": "tag", "match": {"on": "group_join"}, "content": {"remove_tags": ["etNO"]}},
            "content.remove_tags",
            "unknown tag id(s): etNO",
        ),
        ({"kind": "reply", "match": {"keywords": []}}, "match.keywords", "at least 1 item"),
    ],
)
async def test_each_problem_is_named_by_its_field(
    sessions: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
    shop: str,
    fields: dict[str, Any],
    field: str,
    message: str,
) -> None:
    problems = await refused(sessions, db, **{"name": "r"} | fields)
    assert message in problems[field], problems


async def test_every_problem_is_reported_at_once(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, shop: str
) -> None:
    problems = await refused(
        sessions, db, name="r", app="nosuch", match={"weekdays": [9]}, content={"text": "{x}"}
    )
    assert set(problems) == {"app", "match.weekdays.0", "content.text"}


async def test_known_tags_of_the_rules_app_are_accepted(
    sessions: async_sessionmaker[AsyncSession], shop: str
) -> None:
    tag = await create(
        sessions,
        kind="tag",
        name="grouped",
        app=shop,
        match={"on": "group_join"},
        content={"add_tags": ["etKNOWN"]},
    )
    assert tag.content == {"add_tags": ["etKNOWN"], "remove_tags": []}


def test_the_kind_of_a_rule_cannot_change() -> None:
    with pytest.raises(Invalid) as invalid:
        rule_patch({"kind": "tag"})
    assert [e.field for e in invalid.value.errors] == ["kind"]
    assert RulePatch.model_json_schema()["examples"]  # shown in the API's docs
    assert RuleSpec.model_json_schema()["examples"]


async def test_two_enabled_rules_of_one_kind_and_app_cannot_share_a_name(
    sessions: async_sessionmaker[AsyncSession], shop: str
) -> None:
    first = await create(sessions, name="default")
    with pytest.raises(Conflict) as taken:
        await create(sessions, name="default")
    assert (taken.value.code, taken.value.extra) == ("rule_name_taken", {"rule_id": first.id})

    other_app = await create(sessions, name="default", app=shop)
    other_kind = await create(
        sessions, kind="reply", name="default", match={"keywords": ["hi"]}, content={"text": "x"}
    )
    disabled = await create(sessions, name="default", enabled=False)
    assert {other_app.name, other_kind.name, disabled.name} == {"default"}

    async with sessions.begin() as session:
        with pytest.raises(Conflict) as taken:
            await set_enabled(session, disabled.id, True)
    assert taken.value.code == "rule_name_taken"
    with pytest.raises(Conflict):
        await patch(sessions, other_app.id, app=None)  # moving onto the global one's name
    with pytest.raises(Conflict):
        await patch(sessions, disabled.id, enabled=True)

    async with sessions.begin() as session:
        await set_enabled(session, first.id, False)
        assert (await set_enabled(session, disabled.id, True)).enabled


async def test_a_missing_rule_is_not_found(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection
) -> None:
    async with sessions.begin() as session:
        for call in (
            get_rule(session, 404),
            set_enabled(session, 404, False),
            delete_rule(session, 404),
            update_rule(session, 404, RulePatch(name="x"), media_dir=None),
        ):
            with pytest.raises(NotFound) as missing:
                await call
            assert missing.value.code == "rule_not_found"


async def test_rules_are_listed_newest_first_a_page_at_a_time(
    sessions: async_sessionmaker[AsyncSession], shop: str
) -> None:
    ids = [(await create(sessions, name=f"r{n}")).id for n in range(5)]
    shop_rule = await create(sessions, name="for shop", app=shop, enabled=False)
    reply = await create(
        sessions, kind="reply", name="menu", match={"keywords": ["菜单"]}, content={"text": "1"}
    )

    async def page(**filters: Any) -> list[int]:
        async with sessions.begin() as session:
            return [view.id for view in await list_rules(session, **filters)]

    assert await page() == [reply.id, shop_rule.id, *reversed(ids)]
    assert await page(kind="welcome", limit=2) == [shop_rule.id, ids[4]]
    assert await page(kind="welcome", limit=2, after_id=ids[4]) == [ids[3], ids[2]]
    assert await page(kind="welcome", limit=2, after_id=ids[2]) == [ids[1], ids[0]]
    assert await page(kind="welcome", limit=2, after_id=ids[0]) == []
    assert await page(app=shop) == [shop_rule.id]
    assert await page(enabled=False) == [shop_rule.id]
    assert await page(enabled=True, kind="reply") == [reply.id]
    async with sessions.begin() as session:
        with pytest.raises(Invalid) as invalid:
            await list_rules(session, app="nosuch")
    assert [e.field for e in invalid.value.errors] == ["app"]


def test_an_unknown_time_zone_is_a_field_error_not_a_traceback() -> None:
    from app.automations.store import validate

    with pytest.raises(Invalid) as refused:
        validate("welcome", {"timezone": "Mars/Olympus"}, {"text": "hi"})
    assert [str(e) for e in refused.value.errors] == [
        "match: unknown time zone 'Mars/Olympus'; an IANA name such as 'Asia/Shanghai'"
    ]


async def test_an_app_that_enabled_rules_are_for_is_removed_only_with_force(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    db: asyncpg.Connection,
    shop: str,
) -> None:
    """A rule names its app by id: once the app is removed it would apply to nothing, not
    even to a new app given the same slug. Removal is refused, naming the rules, unless
    forced, which disables them; they cannot be enabled again until they name an app."""
    welcome = await create(sessions, name="stores", app=shop)
    tag = await create(
        sessions,
        kind="tag",
        name="vip",
        app=shop,
        match={"on": "group_join"},
        content={"add_tags": ["etKNOWN"]},
    )
    await create(sessions, name="off", app=shop, enabled=False)
    everywhere = await create(sessions, name="everywhere")

    async with sessions.begin() as session:
        with pytest.raises(Conflict) as in_use:
            await remove_app(session, shop)
    assert (in_use.value.code, in_use.value.status) == ("app_in_use", 409)
    assert in_use.value.extra["rules"] == [
        {"id": welcome.id, "kind": "welcome", "name": "stores"},
        {"id": tag.id, "kind": "tag", "name": "vip"},
    ]
    assert f"welcome rule {welcome.id} (stores)" in in_use.value.detail
    assert await db.fetchval("SELECT count(*) FROM apps WHERE removed_at IS NULL") == 1

    async with sessions.begin() as session:
        assert await remove_app(session, shop, force=True) == [welcome.id, tag.id]
    async with sessions.begin() as session:
        rules = {r.id: r.enabled for r in await list_rules(session)}
    assert rules[welcome.id] is rules[tag.id] is False
    assert rules[everywhere.id] is True  # a rule for every app is no app's

    await register(settings, random_app("shop"))  # the slug, given to a new app
    async with sessions.begin() as session:
        with pytest.raises(Invalid) as removed:
            await set_enabled(session, welcome.id, True)
    assert removed.value.errors[0].field == "app"
    assert "'shop' was removed" in removed.value.errors[0].message
    with pytest.raises(Invalid):
        await patch(sessions, welcome.id, enabled=True)
    moved = await patch(sessions, welcome.id, app="shop", enabled=True)  # the new shop
    assert (moved.app, moved.enabled) == ("shop", True)
    assert await db.fetchval("SELECT app_id FROM rules WHERE id = $1", welcome.id) == (
        await db.fetchval("SELECT id FROM apps WHERE slug = 'shop' AND removed_at IS NULL")
    )


async def test_an_app_without_enabled_rules_is_removed_at_once(
    sessions: async_sessionmaker[AsyncSession], shop: str
) -> None:
    disabled = await create(sessions, name="off", app=shop, enabled=False)
    async with sessions.begin() as session:
        assert await remove_app(session, shop) == []
    async with sessions.begin() as session:
        assert not (await get_rule(session, disabled.id)).enabled
