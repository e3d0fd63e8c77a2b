"""The at-rest SecretBox, and `wecom-hub secret-key` (a new key; `rotate`) on the test database."""

import asyncio
import base64
import os
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from Crypto.Cipher import AES
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner, Result

from app.cli import cli
from app.config import Settings, get_settings
from app.crypto.at_rest import SecretBox, SecretBoxError, generate_key, key_id, parse_key
from app.db import create_engine, create_sessionmaker
from app.main import create_app
from app.models import AccessToken, WebhookEndpoint, WecomApp
from app.runtime import secret_box
from app.simulator.callbacks import build_url_verification
from app.webhooks.delivery import SECRET_PURPOSE
from app.wecom_apps import SECRET_FIELDS, open_secret
from tests.conftest import RegisteredApp, random_app, register


def test_seal_open_roundtrip_and_ciphertext_hides_the_secret() -> None:
    box = SecretBox(parse_key(generate_key()))
    sealed = box.seal("corp-secret-値", purpose="app.secret")
    assert "corp-secret" not in sealed
    assert sealed != box.seal("corp-secret-値", purpose="app.secret")  # fresh nonce each time
    assert box.open(sealed, purpose="app.secret") == "corp-secret-値"


def test_wrong_key_wrong_purpose_and_tampering_do_not_open() -> None:
    box = SecretBox(parse_key(generate_key()))
    sealed = box.seal("s3cret", purpose="app.secret")
    with pytest.raises(SecretBoxError):
        SecretBox(parse_key(generate_key())).open(sealed, purpose="app.secret")
    with pytest.raises(SecretBoxError):
        box.open(sealed, purpose="app.token")
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(SecretBoxError):
        box.open(tampered, purpose="app.secret")


@pytest.mark.parametrize("text", ["", "too-short", "!" * 44])
def test_bad_keys_are_refused_with_advice(text: str) -> None:
    with pytest.raises(SecretBoxError, match="secret-key"):
        parse_key(text)


# `wecom-hub secret-key` and `secret-key rotate`, against the test database.


def _legacy_seal(key: str, plaintext: str, purpose: str) -> str:
    """As the code of before key ids sealed (`v1:`, the purpose alone authenticated): how
    the secrets of an existing database are stored."""
    nonce = os.urandom(12)
    cipher = AES.new(parse_key(key), AES.MODE_GCM, nonce=nonce)
    cipher.update(purpose.encode())
    ciphertext, tag = cipher.encrypt_and_digest(plaintext.encode())
    return "v1:" + base64.b64encode(nonce + ciphertext + tag).decode()


def test_secret_key_alone_prints_a_new_key() -> None:
    printed = CliRunner().invoke(cli, ["secret-key"])
    assert printed.exit_code == 0
    assert len(parse_key(printed.output.strip())) == 32
    assert printed.output != CliRunner().invoke(cli, ["secret-key"]).output


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    assert settings.database_url
    monkeypatch.setenv("WECOM_HUB_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


async def _rotate(monkeypatch: pytest.MonkeyPatch, current: str, previous: str | None) -> Result:
    monkeypatch.setenv("WECOM_HUB_SECRET_KEY", current)
    if previous is None:
        monkeypatch.delenv("WECOM_HUB_PREVIOUS_SECRET_KEYS", raising=False)
    else:
        monkeypatch.setenv("WECOM_HUB_PREVIOUS_SECRET_KEYS", previous)
    get_settings.cache_clear()
    # In a thread: the command runs its own event loop, as it does from a shell.
    return await asyncio.to_thread(
        CliRunner().invoke, cli, ["secret-key", "rotate", "--batch", "1"]
    )


async def _answers_url_verification(settings: Settings, apps: list[RegisteredApp]) -> None:
    """A hub started with these settings verifies each app's callbacks: its Token and
    EncodingAESKey open."""
    hub = create_app(settings, database_url=settings.database_url)
    async with (
        hub.router.lifespan_context(hub),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=hub), base_url="http://hub") as client,
    ):
        for app in apps:
            params = build_url_verification(app.crypt, "1616140317555161061")
            answer = await client.get(f"/callback/{app.slug}", params=params)
            assert (answer.status_code, answer.content) == (200, b"1616140317555161061")


async def _opened(settings: Settings) -> dict[str, str]:
    """Every stored secret, opened as the service opens it, by where it is."""
    assert settings.database_url
    box = secret_box(settings)
    engine = create_engine(settings.database_url, settings, pool_size=1)
    opened = {}
    try:
        async with create_sessionmaker(engine).begin() as session:
            for app in await session.scalars(select(WecomApp)):
                for field in SECRET_FIELDS:
                    opened[f"{app.slug}.{field}"] = open_secret(box, app, field)
            for endpoint in await session.scalars(select(WebhookEndpoint)):
                opened["webhook"] = box.open(endpoint.secret_sealed, purpose=SECRET_PURPOSE)
            for token in await session.scalars(select(AccessToken)):
                opened["access_token"] = box.open(token.token_sealed, purpose="token")
    finally:
        await engine.dispose()
    return opened


async def _sealed_values(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch(
        "SELECT token_sealed AS v FROM apps UNION ALL SELECT aes_key_sealed FROM apps"
        " UNION ALL SELECT secret_sealed FROM apps UNION ALL SELECT secret_sealed"
        " FROM webhook_endpoints UNION ALL SELECT token_sealed FROM access_tokens"
    )
    return [row["v"] for row in rows]


async def test_rotate_seals_every_secret_again_with_the_new_key(
    settings: Settings, db: asyncpg.Connection, cli_env: pytest.MonkeyPatch
) -> None:
    """A database sealed with the old key (and some of it from before key ids): with the new
    key current and the old one previous everything keeps working; `rotate` seals it all
    again, bound to its app, and afterwards the old key is not needed."""
    assert settings.secret_key and settings.database_url
    old, new = settings.secret_key.get_secret_value(), generate_key()
    shop, legacy = random_app("shop"), random_app("legacy")
    await register(settings, shop)
    await register(settings, legacy)
    for field, value in (
        ("token", legacy.token),
        ("aes_key", legacy.aes_key),
        ("secret", legacy.secret),
    ):
        sealed = _legacy_seal(old, value, f"app.{field}")
        await db.execute(f"UPDATE apps SET {field}_sealed = $1 WHERE slug = 'legacy'", sealed)  # noqa: S608
    old_box = SecretBox(parse_key(old))
    await db.execute(
        "INSERT INTO webhook_endpoints (url, secret_sealed) VALUES ('https://crm.test/h', $1)",
        old_box.seal("whsec_abc", purpose=SECRET_PURPOSE),
    )
    await db.execute(
        "INSERT INTO access_tokens (corp_id, secret_hash, token_sealed, expires_at)"
        " VALUES ($1, 'h', $2, now() + interval '1 hour')",
        shop.corp_id,
        old_box.seal("ACCESS_TOKEN", purpose="token"),
    )
    before = await _opened(settings)
    assert len(before) == 8

    rotating = settings.model_copy(update={"secret_key": SecretStr(new)})
    rotating.previous_secret_keys = SecretStr(old)
    assert await _opened(rotating) == before  # the old key is previous: all still opens
    await _answers_url_verification(rotating, [shop, legacy])

    rotated = await _rotate(cli_env, new, old)
    assert rotated.exit_code == 0, rotated.output
    new_id = key_id(parse_key(new))
    assert f"apps: 6 sealed again with key {new_id}, 0 already were" in rotated.output
    assert f"webhook_endpoints: 1 sealed again with key {new_id}" in rotated.output
    assert f"access_tokens: 1 sealed again with key {new_id}" in rotated.output
    assert f"previous keys ({key_id(parse_key(old))}) are no longer needed" in rotated.output
    assert all(v.startswith(f"v2:{new_id}:") for v in await _sealed_values(db))

    again = await _rotate(cli_env, new, old)  # idempotent: nothing left to do
    assert again.exit_code == 0, again.output
    assert "apps: 0 sealed again" in again.output and "6 already were" in again.output

    only_new = settings.model_copy(update={"secret_key": SecretStr(new)})
    assert await _opened(only_new) == before
    await _answers_url_verification(only_new, [shop, legacy])
    with pytest.raises(SecretBoxError):  # the old key alone opens nothing any more
        await _opened(settings)


async def test_rotate_reports_values_no_configured_key_opens_and_resumes(
    settings: Settings, db: asyncpg.Connection, cli_env: pytest.MonkeyPatch
) -> None:
    """A value sealed with a key that is not given is left as it is and named by its key
    id (exit 1); the rest is done, and a run with that key finishes the work."""
    assert settings.secret_key
    lost, new = settings.secret_key.get_secret_value(), generate_key()
    await register(settings, random_app("shop"))
    await register(settings, random_app("other"))
    older = SecretBox(parse_key(generate_key()))
    other_id = await db.fetchval("SELECT id FROM apps WHERE slug = 'other'")
    corp = await db.fetchval("SELECT corp_id FROM apps WHERE slug = 'other'")
    # `other` was sealed with yet another key.
    await db.execute(
        "UPDATE apps SET secret_sealed = $1 WHERE slug = 'other'",
        older.seal("s", purpose="app.secret", owner=f"apps/{other_id}/{corp}"),
    )

    partial = await _rotate(cli_env, new, lost)
    assert partial.exit_code == 1, partial.output
    assert f"1 values do not open with any configured key (sealed 1 with key {older.key_id})" in (
        " ".join(partial.output.split())
    )
    assert "apps: 5 sealed again" in partial.output
    assert "no longer needed" not in partial.output

    older_key = base64.urlsafe_b64encode(older._keys[older.key_id]).decode()
    finished = await _rotate(cli_env, new, f"{lost},{older_key}")
    assert finished.exit_code == 0, finished.output
    assert "apps: 1 sealed again" in finished.output and "5 already were" in finished.output
    new_id = key_id(parse_key(new))
    assert all(v.startswith(f"v2:{new_id}:") for v in await _sealed_values(db))
