"""The app services the CLI and the HTTP API share, called directly on the test database."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, get_settings
from app.crypto import WXBizMsgCrypt
from app.crypto.at_rest import SecretBox, SecretBoxError, parse_key
from app.db import create_engine, create_sessionmaker
from app.errors import Conflict, Invalid, NotFound
from app.wecom_apps import (
    SECRET_FIELDS,
    AppExists,
    AppSpec,
    AppView,
    add_app,
    app_patch,
    app_spec,
    app_view,
    get_app,
    load_credentials,
    mask,
    open_keys,
    open_secret,
    remove_app,
    update_app,
)
from tests.api_helpers import auth, problem
from tests.conftest import RegisteredApp, random_app


@pytest.fixture
async def sessions(
    settings: Settings, db: asyncpg.Connection
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    assert settings.database_url
    engine = create_engine(settings.database_url, settings, pool_size=2)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def box(settings: Settings) -> SecretBox:
    assert settings.secret_key
    return SecretBox(parse_key(settings.secret_key.get_secret_value()))


def spec_of(app: RegisteredApp, **fields: Any) -> AppSpec:
    return app_spec(
        {
            "slug": app.slug,
            "corp_id": app.corp_id,
            "token": app.token,
            "aes_key": app.aes_key,
            "secret": app.secret,
        }
        | fields
    )


async def added(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, app: RegisteredApp
) -> AppView:
    async with sessions.begin() as session:
        return app_view(await add_app(session, box, spec_of(app, label="Shop")))


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"slug": "Bad/Slug"}, "slug", "1-64 of [a-z0-9_-], starting with a letter or digit"),
        ({"corp_id": ""}, "corp_id", "at least 1 character"),
        ({"token": "has spaces!"}, "token", "1-32 letters and digits"),
        ({"aes_key": "tooshort"}, "aes_key", "43"),
        ({"secret": "  "}, "secret", "must not be empty"),
        ({"agent_id": "x"}, "agent_id", "valid integer"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_each_problem_of_a_new_app_is_named_by_its_field(
    fields: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(Invalid) as invalid:
        spec_of(random_app("shop"), **fields)
    [error] = invalid.value.errors
    assert (error.field, message in error.message) == (field, True), error


async def test_an_app_is_shown_without_any_secret(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox
) -> None:
    app = random_app("shop")
    view = await added(sessions, box, app)
    assert view.model_dump(exclude={"created_at"}) == {
        "slug": "shop",
        "corp_id": app.corp_id,
        "agent_id": None,
        "label": "Shop",
        "callback_path": "/callback/shop",
    }
    shown = view.model_dump_json()
    for secret in (app.token, app.aes_key, app.secret):
        assert secret[:8] not in shown
    async with sessions.begin() as session:
        assert app_view(await get_app(session, "shop")) == view


async def test_a_second_app_with_a_taken_slug_is_a_conflict(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox
) -> None:
    await added(sessions, box, random_app("shop"))
    with pytest.raises(AppExists) as exists:
        await added(sessions, box, random_app("shop"))
    assert isinstance(exists.value, Conflict)
    assert (exists.value.code, exists.value.status) == ("app_exists", 409)


async def test_two_apps_added_at_once_with_one_slug_are_a_conflict_not_an_error(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, db: asyncpg.Connection
) -> None:
    """Both look the slug up before either commits; the unique index decides, and the one
    that loses is told `app_exists`, not an IntegrityError."""
    async with sessions.begin() as first, sessions.begin() as second:
        await add_app(first, box, spec_of(random_app("shop")))
        losing = asyncio.create_task(add_app(second, box, spec_of(random_app("shop"))))
        deadline = time.monotonic() + 10
        while not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ):
            assert time.monotonic() < deadline, "the second insert never waited on the first"
            await asyncio.sleep(0.01)
        await first.commit()
        with pytest.raises(AppExists):
            await losing
        await second.rollback()
    assert await db.fetchval("SELECT count(*) FROM apps") == 1


async def test_an_unknown_app_is_not_found(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox
) -> None:
    async with sessions.begin() as session:
        for call in (
            get_app(session, "nosuch"),
            remove_app(session, "nosuch"),
            update_app(session, box, "nosuch", app_patch({"label": "x"})),
        ):
            with pytest.raises(NotFound) as missing:
                await call
            assert missing.value.code == "unknown_app"


async def test_an_update_changes_only_what_it_names_and_rotates_secrets(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox
) -> None:
    app = random_app("shop")
    before = await added(sessions, box, app)
    async with sessions.begin() as session:
        view = await update_app(session, box, "shop", app_patch({"agent_id": 1000002}))
    assert view == before.model_copy(update={"agent_id": 1000002})

    rotated = random_app("shop")
    async with sessions.begin() as session:
        view = await update_app(
            session,
            box,
            "shop",
            app_patch({"token": rotated.token, "aes_key": rotated.aes_key, "secret": "new"}),
        )
    assert view == before.model_copy(update={"agent_id": 1000002})
    async with sessions.begin() as session:
        stored = await get_app(session, "shop")
        credentials = await load_credentials(session, box, stored.id)
    assert credentials.secret == "new"
    crypt = open_keys(stored, box).crypt
    assert crypt.token == rotated.token
    wecom = WXBizMsgCrypt(
        token=rotated.token, encoding_aes_key=rotated.aes_key, receive_id=app.corp_id
    )
    assert crypt.decrypt(wecom.encrypt(b"<xml/>")) == b"<xml/>"  # the new EncodingAESKey

    async with sessions.begin() as session:
        cleared = await update_app(session, box, "shop", app_patch({"agent_id": None}))
    assert cleared.agent_id is None and cleared.label == "Shop"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"token": "has spaces!"}, "token"),
        ({"aes_key": "tooshort"}, "aes_key"),
        ({"secret": ""}, "secret"),
        ({"label": None}, "label"),
        ({"slug": "other"}, "slug"),
        ({"corp_id": "wwother"}, "corp_id"),
    ],
)
def test_a_patch_is_validated_like_a_new_app(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as invalid:
        app_patch(patch)
    assert [e.field for e in invalid.value.errors] == [field]


async def test_a_removed_app_is_gone_and_its_slug_free(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox
) -> None:
    await added(sessions, box, random_app("shop"))
    async with sessions.begin() as session:
        await remove_app(session, "shop")
    async with sessions.begin() as session:
        with pytest.raises(NotFound):
            await get_app(session, "shop")
    await added(sessions, box, random_app("shop"))


async def test_a_secret_copied_into_another_apps_row_does_not_open(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, db: asyncpg.Connection
) -> None:
    """Each app's secrets are sealed bound to it: someone who can write the database but
    not read the key cannot make one app use another's Token, EncodingAESKey or Secret."""
    shop, other = random_app("shop"), random_app("other")
    await added(sessions, box, shop)
    await added(sessions, box, other)
    for column in ("token_sealed", "aes_key_sealed", "secret_sealed"):
        await db.execute(
            f"UPDATE apps SET {column} = (SELECT {column} FROM apps WHERE slug = 'shop')"  # noqa: S608
            " WHERE slug = 'other'"
        )
    async with sessions.begin() as session:
        stored = {app.slug: app for app in [await get_app(session, s) for s in ("shop", "other")]}
        assert open_secret(box, stored["shop"], "secret") == shop.secret
        for field in SECRET_FIELDS:
            with pytest.raises(SecretBoxError):
                open_secret(box, stored["other"], field)
        with pytest.raises(SecretBoxError):
            await load_credentials(session, box, stored["other"].id)


@pytest.mark.parametrize("secret", ["short", "Your32CharTokenYour32CharTokenAB", "x" * 43])
def test_mask_shows_the_length_and_no_character(secret: str) -> None:
    assert mask(secret) == f"…({len(secret)} chars)"
    assert secret[-1] not in mask(secret).replace("chars", "")


async def _welcome_rule(client: httpx.AsyncClient, headers: dict[str, str], app: str) -> int:
    answer = await client.post(
        "/api/v1/rules",
        json={
            "kind": "welcome",
            "name": "hi",
            "app": app,
            "match": {},
            "content": {"text": "你好"},
        },
        headers=headers,
    )
    assert answer.status_code == 201, answer.text
    rule_id: int = answer.json()["id"]
    return rule_id


async def test_the_api_refuses_to_remove_an_app_its_rules_are_for_unless_forced(
    client: httpx.AsyncClient, hub: FastAPI, wecom_app: RegisteredApp
) -> None:
    headers = await auth(hub)
    rule_id = await _welcome_rule(client, headers, wecom_app.slug)
    body = problem(
        await client.delete(f"/api/v1/apps/{wecom_app.slug}", headers=headers), 409, "app_in_use"
    )
    assert body["rules"] == [{"id": rule_id, "kind": "welcome", "name": "hi"}]
    assert "--force" in body["detail"] and "force=true" in body["detail"]
    assert (await client.get(f"/api/v1/apps/{wecom_app.slug}", headers=headers)).status_code == 200

    removed = await client.delete(
        f"/api/v1/apps/{wecom_app.slug}", params={"force": "true"}, headers=headers
    )
    assert removed.status_code == 204
    rule = (await client.get(f"/api/v1/rules/{rule_id}", headers=headers)).json()
    assert rule["enabled"] is False
    enabled = await client.patch(
        f"/api/v1/rules/{rule_id}", json={"enabled": True}, headers=headers
    )
    assert problem(enabled, 422, "validation_failed")["errors"][0]["field"] == "app"


def test_the_cli_refuses_to_remove_an_app_its_rules_are_for_unless_forced(
    settings: Settings, wecom_app: RegisteredApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.database_url and settings.secret_key
    monkeypatch.setenv("WECOM_HUB_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("WECOM_HUB_SECRET_KEY", settings.secret_key.get_secret_value())
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        added = runner.invoke(
            cli,
            [
                *("rules", "add", "welcome", "--name", "hi", "--app", wecom_app.slug),
                *("--match", "{}", "--content", '{"text": "你好"}'),
            ],
        )
        assert added.exit_code == 0, added.output
        refused = runner.invoke(cli, ["apps", "remove", wecom_app.slug])
        assert refused.exit_code == 1, refused.output
        assert "has enabled rules: welcome rule" in refused.output and "--force" in refused.output
        assert runner.invoke(cli, ["apps", "show", wecom_app.slug]).exit_code == 0

        forced = runner.invoke(cli, ["apps", "remove", wecom_app.slug, "--force"])
        assert forced.exit_code == 0, forced.output
        assert f"removed app {wecom_app.slug!r}" in forced.output
        assert "disabled its rules" in forced.output
        listed = runner.invoke(cli, ["rules", "list"])
        assert listed.exit_code == 0 and "hi" in listed.output
        enabled = runner.invoke(cli, ["rules", "enable", "1"])
        assert enabled.exit_code == 2 and "was removed" in enabled.output, enabled.output
    finally:
        get_settings.cache_clear()
