"""`wecom-hub apps …` as an operator runs it, against the test database."""

import asyncio
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from app.cli import cli
from app.config import Settings, get_settings
from app.crypto.at_rest import SecretBox, parse_key
from app.runtime import ConfigurationError, asyncpg_url, secret_box
from app.wecom_apps import secret_owner
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
        assert f"…({len(value)} chars)" in shown.output

    [row] = asyncio.run(_sql(database_url, "SELECT * FROM apps"))
    for column, value in (
        ("secret_sealed", secret),
        ("token_sealed", token),
        ("aes_key_sealed", aes_key),
    ):
        assert value not in row[column] and row[column].startswith("v2:")

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


def test_the_slug_rule_is_printed_with_its_brackets(env: None) -> None:
    result = runner.invoke(cli, _add("Bad/Slug"))
    assert result.exit_code == 2
    assert "slug: 1-64 of [a-z0-9_-], starting with a letter or digit" in result.output


def _stored_secrets(database_url: str, secret_key: str) -> dict[str, str]:
    [row] = asyncio.run(_sql(database_url, "SELECT * FROM apps WHERE removed_at IS NULL"))
    box = SecretBox(parse_key(secret_key))
    return {
        field: box.open(
            row[f"{field}_sealed"],
            purpose=f"app.{field}",
            owner=secret_owner(row["id"], row["corp_id"]),
        )
        for field in ("token", "aes_key", "secret")
    }


def test_secrets_can_come_from_stdin_or_the_environment(
    env: None, database_url: str, secret_key: str
) -> None:
    app = random_app("shop")
    added = runner.invoke(
        cli,
        [
            *("apps", "add", "--slug", "shop", "--corp-id", app.corp_id),
            *("--token", "-", "--aes-key", "-", "--secret", "-"),
        ],
        input=f"{app.token}\n{app.aes_key}\n{app.secret}\n",
    )
    assert added.exit_code == 0, added.output
    assert _stored_secrets(database_url, secret_key) == {
        "token": app.token,
        "aes_key": app.aes_key,
        "secret": app.secret,
    }

    rotated = random_app("shop")
    updated = runner.invoke(
        cli, ["apps", "update", "shop", "--secret", "-"], input=f"{rotated.secret}\n"
    )
    assert updated.exit_code == 0, updated.output
    assert "secret" in updated.output and rotated.secret not in updated.output
    assert _stored_secrets(database_url, secret_key)["secret"] == rotated.secret

    from_env = runner.invoke(
        cli,
        ["apps", "update", "shop", "--label", "Shop"],
        env={"WECOM_HUB_APP_TOKEN": rotated.token, "WECOM_HUB_APP_AES_KEY": rotated.aes_key},
    )
    assert from_env.exit_code == 0, from_env.output
    assert _stored_secrets(database_url, secret_key) == {
        "token": rotated.token,
        "aes_key": rotated.aes_key,
        "secret": rotated.secret,
    }
    assert "Shop" in runner.invoke(cli, ["apps", "list"]).output


def test_a_secret_promised_on_stdin_but_missing_is_refused(env: None) -> None:
    result = runner.invoke(cli, _add("shop", **{"--secret": "-"}), input="")
    assert result.exit_code == 2
    assert "secret: given as `-`, but stdin has no line for it" in result.output


def test_updating_a_missing_app_or_nothing_is_refused(env: None) -> None:
    missing = runner.invoke(cli, ["apps", "update", "nosuch", "--label", "x"])
    assert (missing.exit_code, "no app 'nosuch'" in missing.output) == (1, True)
    assert runner.invoke(cli, _add("shop")).exit_code == 0
    assert runner.invoke(cli, ["apps", "update", "shop"]).exit_code == 2
    invalid = runner.invoke(cli, ["apps", "update", "shop", "--token", "has spaces!"])
    assert (invalid.exit_code, "token: 1-32 letters" in invalid.output) == (2, True)


def test_rules_are_added_listed_shown_updated_and_removed(env: None) -> None:
    assert runner.invoke(cli, _add("shop")).exit_code == 0
    added = runner.invoke(
        cli,
        [
            *("rules", "add", "welcome", "--name", "[stores]", "--app", "shop"),
            *("--match", '{"state": "store_"}'),
            *("--content", '{"text": "欢迎 [门店] {customer_name}"}'),
        ],
    )
    assert added.exit_code == 0, added.output
    [rule_id] = re.findall(r"added welcome rule (\d+): \[stores\]", added.output)

    listed = runner.invoke(cli, ["rules", "list"])
    assert listed.exit_code == 0, listed.output
    assert "shop" in listed.output and "[stores]" in listed.output  # not read as markup

    shown = runner.invoke(cli, ["rules", "show", rule_id])
    assert shown.exit_code == 0, shown.output
    rule = json.loads(shown.output)
    assert (rule["id"], rule["app"], rule["name"]) == (int(rule_id), "shop", "[stores]")
    assert rule["content"] == {"text": "欢迎 [门店] {customer_name}", "attachments": []}

    updated = runner.invoke(
        cli,
        [
            *("rules", "update", rule_id, "--all-apps", "--priority", "5"),
            *("--content", '{"text": "秋季欢迎"}'),
        ],
    )
    assert updated.exit_code == 0, updated.output
    rule = json.loads(runner.invoke(cli, ["rules", "show", rule_id]).output)
    assert (rule["app"], rule["priority"], rule["content"]["text"]) == (None, 5, "秋季欢迎")
    assert rule["match"]["state"] == "store_"  # not named: kept

    assert runner.invoke(cli, ["rules", "disable", rule_id]).exit_code == 0
    assert json.loads(runner.invoke(cli, ["rules", "show", rule_id]).output)["enabled"] is False
    assert runner.invoke(cli, ["rules", "enable", rule_id]).exit_code == 0
    assert runner.invoke(cli, ["rules", "remove", rule_id]).exit_code == 0
    for command in ("show", "enable", "remove"):
        gone = runner.invoke(cli, ["rules", command, rule_id])
        assert (gone.exit_code, f"no rule {rule_id}" in gone.output) == (1, True)


def test_rule_refusals_name_their_field_and_exit_code(env: None) -> None:
    def add(*options: str) -> Result:
        return runner.invoke(
            cli, ["rules", "add", "welcome", "--name", "default", "--match", "{}", *options]
        )

    assert add("--content", '{"text": "hi"}').exit_code == 0
    invalid = add("--content", '{"text": "hi {nickname}"}', "--app", "nosuch")
    assert invalid.exit_code == 2
    assert "app: no app 'nosuch'" in invalid.output
    assert "content.text: unknown placeholder {nickname}" in invalid.output
    not_json = add("--content", "{text")
    assert (not_json.exit_code, "content: not JSON" in not_json.output) == (2, True)
    taken = add("--content", '{"text": "hello"}')
    assert (taken.exit_code, "'default'" in taken.output) == (1, True)
    bad_update = runner.invoke(cli, ["rules", "update", "1", "--match", '{"hours": 3}'])
    assert (bad_update.exit_code, "match.hours:" in bad_update.output) == (2, True)


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


def test_apikeys_create_list_revoke(env: None, database_url: str) -> None:
    """The first admin key comes from here; it is printed once and works with the API."""
    created = runner.invoke(cli, ["apikeys", "create", "--name", "ops [night]", "--scope", "admin"])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("whk_") and len(key) > 40
    stored = asyncio.run(_sql(database_url, "SELECT name, scope, prefix, key_hash FROM api_keys"))
    assert [(r["name"], r["scope"]) for r in stored] == [("ops [night]", "admin")]
    assert key.startswith(stored[0]["prefix"]) and key.encode() not in stored[0]["key_hash"]

    listed = runner.invoke(cli, ["apikeys", "list"])
    assert stored[0]["prefix"] in listed.output and "ops [night]" in listed.output
    assert key not in listed.output

    bad = runner.invoke(cli, ["apikeys", "create", "--name", "x", "--scope", "root"])
    assert bad.exit_code == 2 and "scope" in bad.output
    assert runner.invoke(cli, ["apikeys", "revoke", "1"]).exit_code == 0
    revoked = asyncio.run(_sql(database_url, "SELECT revoked_at FROM api_keys"))
    assert revoked[0]["revoked_at"] is not None
    assert runner.invoke(cli, ["apikeys", "revoke", "99"]).exit_code == 1


def test_migration_heads_are_read_as_alembic_reads_them() -> None:
    """Commands skip Alembic when the database is at these heads: they must be Alembic's."""
    from alembic.script import ScriptDirectory

    import migrations
    from app.cli import _migration_heads

    script = ScriptDirectory(str(Path(migrations.__file__).parent))
    assert _migration_heads() == set(script.get_heads())
