"""WECOM_HUB_SECRET_KEY_FILE and WECOM_HUB_DATABASE_PASSWORD_FILE: secrets as the files Docker
and Kubernetes mount, never in the environment or on a command line."""

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, get_settings
from app.crypto.at_rest import SecretBox, generate_key, parse_key
from app.db import asyncpg_dsn
from app.runtime import ConfigurationError, database_url, secret_box

# Everything a URL would have to escape, and a space: the file holds the password as it is.
AWKWARD_PASSWORD = "p@ss:w/rd %41#?&="
REMOTE = "postgresql://wecom_hub@postgres:5432/wecom_hub"

runner = CliRunner()


def secret_file(folder: Path, text: str) -> Path:
    path = folder / "secret"
    path.write_text(text)
    return path


def test_key_file_opens_what_the_same_key_sealed(tmp_path: Path) -> None:
    key = generate_key()
    settings = Settings(
        _env_file=None, database_url=REMOTE, secret_key_file=secret_file(tmp_path, key + "\n")
    )
    sealed = SecretBox(parse_key(key)).seal("corp secret", purpose="app.secret")
    assert secret_box(settings).open(sealed, purpose="app.secret") == "corp secret"


def test_password_file_is_set_into_the_url_as_written_less_its_newline(tmp_path: Path) -> None:
    path = secret_file(tmp_path, AWKWARD_PASSWORD + "\n")
    settings = Settings(_env_file=None, database_url=REMOTE, database_password_file=path)
    given = database_url(settings)
    url = make_url(given)
    assert url.password == AWKWARD_PASSWORD
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.host, url.port, url.database) == (
        "wecom_hub",
        "postgres",
        5432,
        "wecom_hub",
    )
    assert make_url(asyncpg_dsn(given)).password == AWKWARD_PASSWORD, "as asyncpg gets it"


def without_password(url: str) -> tuple[str, str]:
    """The server's URL less its password, and the password for the file (the server's own,
    which it then checks; any, for a server that trusts the test's connections)."""
    parsed = make_url(url)
    password = parsed.password or AWKWARD_PASSWORD
    # set(password=None) would keep it: None there means "not given"
    return parsed._replace(password=None).render_as_string(), str(password)


def test_the_database_is_reached_with_the_password_from_the_file(
    server_url: str, tmp_path: Path
) -> None:
    url, password = without_password(server_url)
    path = secret_file(tmp_path, password + "\n")
    settings = Settings(_env_file=None, database_url=url, database_password_file=path)

    async def who() -> str:
        connection = await asyncpg.connect(asyncpg_dsn(database_url(settings)))
        try:
            user: str = await connection.fetchval("SELECT current_user")
            return user
        finally:
            await connection.close()

    assert asyncio.run(who()) == make_url(server_url).username


def key_from(path: Path) -> None:
    secret_box(Settings(_env_file=None, database_url=REMOTE, secret_key_file=path))


def password_from(path: Path) -> None:
    database_url(Settings(_env_file=None, database_url=REMOTE, database_password_file=path))


READERS = {"WECOM_HUB_SECRET_KEY_FILE": key_from, "WECOM_HUB_DATABASE_PASSWORD_FILE": password_from}


def missing(folder: Path) -> Path:
    return folder / "nowhere"


def empty(folder: Path) -> Path:
    return secret_file(folder, "\n")


def not_text(folder: Path) -> Path:
    path = folder / "binary"
    path.write_bytes(b"\xff\xfe\x00")
    return path


@pytest.mark.parametrize("setting", READERS)
@pytest.mark.parametrize(
    ("make", "why"),
    [
        (missing, "No such file or directory"),
        (lambda folder: folder, "Is a directory"),
        (empty, "is empty"),
        (not_text, "is not UTF-8 text"),
    ],
    ids=["missing", "folder", "empty", "not-text"],
)
def test_a_file_that_cannot_be_used_is_one_line_naming_the_setting_and_the_file(
    setting: str, make: Callable[[Path], Path], why: str, tmp_path: Path
) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigurationError) as refused:
        READERS[setting](path)
    message = str(refused.value)
    assert "\n" not in message
    assert setting in message and str(path) in message and why in message


def test_a_key_file_without_a_key_names_the_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "not a key\n")
    with pytest.raises(ConfigurationError) as refused:
        key_from(path)
    assert str(refused.value).startswith(f"WECOM_HUB_SECRET_KEY_FILE {path}: the secret key must")


def test_two_sources_for_one_secret_are_refused(tmp_path: Path) -> None:
    key = generate_key()
    key_file = secret_file(tmp_path, key)
    both = Settings(_env_file=None, database_url=REMOTE, secret_key=key, secret_key_file=key_file)
    with pytest.raises(ConfigurationError, match="both WECOM_HUB_SECRET_KEY and"):
        secret_box(both)
    with_password = Settings(
        _env_file=None,
        database_url="postgresql://wecom_hub:inline@postgres/wecom_hub",
        database_password_file=secret_file(tmp_path, "other"),
    )
    with pytest.raises(ConfigurationError, match="remove the one from the URL"):
        database_url(with_password)


def test_a_password_file_for_the_embedded_postgres_is_refused(tmp_path: Path) -> None:
    """Not ignored: the operator meant a database, and would get an embedded one."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path, database_password_file=secret_file(tmp_path, "pw")
    )
    with pytest.raises(ConfigurationError, match="WECOM_HUB_DATABASE_URL is not"):
        database_url(settings)


def test_without_a_key_the_message_names_both_ways_to_give_one() -> None:
    with pytest.raises(
        ConfigurationError, match="WECOM_HUB_SECRET_KEY or WECOM_HUB_SECRET_KEY_FILE"
    ):
        secret_box(Settings(_env_file=None, database_url=REMOTE))


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """The CLI's settings from the environment only (no .env where it runs), read afresh."""
    monkeypatch.delenv("WECOM_HUB_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_cli_runs_with_both_secrets_from_files(
    environment: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> None:
    url, password = without_password(database_url)
    (tmp_path / "key").write_text(generate_key() + "\n")
    (tmp_path / "password").write_text(password + "\n")
    environment.setenv("WECOM_HUB_DATABASE_URL", url)
    environment.setenv("WECOM_HUB_SECRET_KEY_FILE", str(tmp_path / "key"))
    environment.setenv("WECOM_HUB_DATABASE_PASSWORD_FILE", str(tmp_path / "password"))
    listed = runner.invoke(cli, ["apps", "list"])
    assert listed.exit_code == 0, listed.output


@pytest.mark.parametrize("setting", READERS)
def test_the_cli_says_which_file_it_cannot_read_in_one_line(
    setting: str, environment: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> None:
    url, password = without_password(database_url)
    (tmp_path / "key").write_text(generate_key())
    (tmp_path / "password").write_text(password)
    environment.setenv("WECOM_HUB_DATABASE_URL", url)
    environment.setenv("WECOM_HUB_SECRET_KEY_FILE", str(tmp_path / "key"))
    environment.setenv("WECOM_HUB_DATABASE_PASSWORD_FILE", str(tmp_path / "password"))
    environment.setenv(setting, str(tmp_path / "gone"))
    listed = runner.invoke(cli, ["apps", "list"])
    assert listed.exit_code == 2
    assert listed.output.strip() == (
        f"cannot read {setting} {tmp_path / 'gone'}: No such file or directory"
    )
