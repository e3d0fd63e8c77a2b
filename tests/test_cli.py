"""`wecom-hub apps …` as an operator runs it, against the test database."""

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, get_settings
from app.runtime import ConfigurationError, asyncpg_url, secret_box
from tests.conftest import TRUNCATE_ALL, random_app

runner = CliRunner()


@pytest.fixture
def env(database_url: str, secret_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WECOM_HUB_DATABASE_URL", database_url)
    monkeypatch.setenv("WECOM_HUB_SECRET_KEY", secret_key)
    get_settings.cache_clear()
    asyncio.run(_sql(database_url, TRUNCATE_ALL))
    yield
    get_settings.cache_clear()


async def _sql(url: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


def _add(slug: str, **overrides: str) -> list[str]:
    app = random_app(slug)
    options = {
        "--slug": slug,
        "--corp-id": app.corp_id,
        "--token": app.token,
        "--aes-key": app.aes_key,
        "--secret": app.secret,
        **overrides,
    }
    return ["apps", "add", *[part for pair in options.items() for part in pair]]


def test_add_list_show_remove(env: None, database_url: str) -> None:
    args = _add("shop", **{"--agent-id": "1000002", "--label": "Shop"})
    secret, token, aes_key = (
        args[args.index("--secret") + 1],
        args[args.index("--token") + 1],
        args[args.index("--aes-key") + 1],
    )

    added = runner.invoke(cli, args)
    assert added.exit_code == 0, added.output
    assert "/callback/shop" in added.output

    listed = runner.invoke(cli, ["apps", "list"])
    assert "shop" in listed.output and "1000002" in listed.output

    shown = runner.invoke(cli, ["apps", "show", "shop"])
    assert shown.exit_code == 0
    for value in (secret, token, aes_key):
        assert value not in shown.output
        assert value[:4] + "…" in shown.output

    [row] = asyncio.run(_sql(database_url, "SELECT * FROM apps"))
    for column, value in (
        ("secret_sealed", secret),
        ("token_sealed", token),
        ("aes_key_sealed", aes_key),
    ):
        assert value not in row[column] and row[column].startswith("v1:")

    assert runner.invoke(cli, ["apps", "remove", "shop"]).exit_code == 0
    assert runner.invoke(cli, ["apps", "show", "shop"]).exit_code == 1
    assert runner.invoke(cli, ["apps", "remove", "shop"]).exit_code == 1
    assert runner.invoke(cli, _add("shop")).exit_code == 0  # the slug is free again


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"--aes-key": "tooshort"}, "aes_key"),
        ({"--token": "has spaces!"}, "token"),
        ({"--slug": "Bad/Slug"}, "slug"),
        ({"--corp-id": ""}, "corp_id"),
    ],
)
def test_invalid_app_is_refused_and_nothing_stored(
    env: None, database_url: str, override: dict[str, str], complaint: str
) -> None:
    result = runner.invoke(cli, _add("shop", **override))
    assert result.exit_code == 2
    assert complaint in result.output
    assert asyncio.run(_sql(database_url, "SELECT count(*) FROM apps"))[0][0] == 0


def test_duplicate_slug_is_refused(env: None) -> None:
    assert runner.invoke(cli, _add("shop")).exit_code == 0
    again = runner.invoke(cli, _add("shop"))
    assert again.exit_code == 1
    assert "exists" in again.output


def test_database_url_without_secret_key_is_a_clear_error(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WECOM_HUB_DATABASE_URL", database_url)
    monkeypatch.delenv("WECOM_HUB_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    try:
        result = runner.invoke(cli, _add("shop"))
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "WECOM_HUB_SECRET_KEY" in result.output


def test_embedded_mode_generates_one_private_key(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)
    first = secret_box(settings)
    key_file = tmp_path / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    sealed = first.seal("x", purpose="p")
    assert secret_box(settings).open(sealed, purpose="p") == "x"  # same key next time


def test_secret_key_command_prints_a_usable_key() -> None:
    result = runner.invoke(cli, ["secret-key"])
    settings = Settings(_env_file=None, secret_key=result.output.strip())
    secret_box(settings)


def test_urls_devops_paste_are_accepted() -> None:
    assert asyncpg_url("postgres://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    assert asyncpg_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    with pytest.raises(ConfigurationError):
        asyncpg_url("mysql://u@h/db")
