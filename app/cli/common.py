"""What every command shares: settings, the database made ready (or one line saying why
not), one transaction per unit of work, and refusals printed as `field: message`."""

# The service itself (web server, ORM models, WeCom client, simulator) is imported inside the
# functions that use it: all of it takes seconds to import on a small machine, and `--help`
# or `apps list` should answer at once.

from __future__ import annotations

import ast
import asyncio
import errno
import gc
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.errors import AppError, FieldError, Invalid

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from app.config import Settings
    from app.crypto.at_rest import SecretBox
    from app.wecom.client import WecomClient

console = Console()
T = TypeVar("T")


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived loop on uvloop where it is installed (uvicorn[standard] brings it),
    as `serve` does: socket writes and timers in C, not in Python."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def freeze_startup_objects() -> None:
    """Move everything alive now (modules, ORM mappers, settings; called again once the
    pools, caches and loops exist) out of the garbage collector's reach. They live for
    ever; without this each full collection walks all of them mid-request, which showed as
    40-60 ms stalls in bench/ingest.py."""
    gc.collect()
    gc.freeze()


def exit_cleanly_on_sigterm() -> None:
    """After its graceful shutdown uvicorn re-raises the SIGTERM it caught. With the default
    action the process would die there, before atexit stops the embedded Postgres; exiting
    normally instead lets it stop cleanly (docker stop, systemd, kill)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def invoked_as() -> str:
    """How to run wecom-hub again, as this user can: `wecom-hub` if that is on PATH,
    else the path they typed (`.venv/bin/wecom-hub`), so that printed hints work as given."""
    me = Path(sys.argv[0]).resolve()
    on_path = shutil.which("wecom-hub")
    if on_path and Path(on_path).resolve() == me:
        return "wecom-hub"
    return sys.argv[0]


def current_settings() -> Settings:
    from app.config import get_settings

    return get_settings()


def listen(host: str, port: int, option: str) -> socket.socket:
    """The server's socket, bound now: a port in use is then one line naming the option to
    change, said before anything claims to be listening (uvicorn binds only after its
    startup, and says it in a log line)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            complain(
                f"port {port} on {host} is in use (another wecom-hub serve or demo?): stop "
                f"that, or choose another port with {option}"
            )
        else:
            complain(f"cannot listen on {host}:{port} ({exc.strerror}): choose with {option}")
        raise typer.Exit(1) from None
    return sock


def prepare_database(settings: Settings) -> str:
    """Database URL, starting the embedded Postgres if needed, reachable, migrated to head."""
    from app import runtime
    from app.db import upgrade_database

    try:
        url = runtime.database_url(settings)
    except runtime.ConfigurationError as exc:
        complain(str(exc))
        raise typer.Exit(2) from None
    if _schema_versions(url, settings) != _migration_heads():
        upgrade_database(url)
    return url


def _schema_versions(url: str, settings: Settings) -> set[str]:
    """The migrations the database is at (none on a new one), read on a first connection
    made with the service's own timeout: a database that cannot be used is then one line,
    not a traceback from deep inside the migrations (which would also wait for the
    system's connect timeout, not ours)."""
    import asyncpg

    from app.db import asyncpg_dsn

    async def read() -> set[str]:
        timeout = settings.database_timeout_seconds
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
        try:
            rows = await connection.fetch("SELECT version_num FROM alembic_version")
        except asyncpg.UndefinedTableError:
            return set()
        finally:
            await connection.close()
        return {row["version_num"] for row in rows}

    try:
        return asyncio.run(read())
    except Exception as exc:
        if not _database_refused(exc):
            raise
        _no_database(url, settings, exc)


def _migration_heads() -> set[str] | None:
    """The latest migrations, read from the migration files' own `revision` and
    `down_revision`: when the database is at them Alembic would do nothing, and importing
    it alone costs a fifth of a second. None if a file does not say them plainly; then
    Alembic decides."""
    import migrations

    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (Path(migrations.__file__).parent / "versions").glob("*.py"):
        if path.name == "__init__.py":
            continue
        said = _assigned(path)
        try:
            revision = ast.literal_eval(said["revision"])
            down = ast.literal_eval(said["down_revision"])
        except (KeyError, ValueError):
            return None
        revisions.add(revision)
        parents.update([down] if isinstance(down, str) else down or ())
    return revisions - parents


def _assigned(path: Path) -> dict[str, ast.expr]:
    """What a module's top level assigns to each name."""
    said: dict[str, ast.expr] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            said |= {t.id: node.value for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and node.value and isinstance(node.target, ast.Name):
            said[node.target.id] = node.value
    return said


def _database_refused(exc: BaseException) -> bool:
    """Postgres is unreachable, or reachable but refuses us (wrong password, no such
    database): either way the URL or the server is what to check."""
    import asyncpg

    from app.db import is_unavailable

    return is_unavailable(exc) or isinstance(exc, asyncpg.PostgresError)


def _no_database(url: str, settings: Settings, exc: BaseException) -> NoReturn:
    from sqlalchemy.engine import make_url

    shown = make_url(url).set(drivername="postgresql").render_as_string(hide_password=True)
    if settings.database_url:
        check = (
            "check that Postgres runs there and that the host, port, user, password and "
            "database in WECOM_HUB_DATABASE_URL are right"
        )
    else:
        check = f"check the embedded Postgres in {settings.data_dir.resolve() / 'postgres'}"
    complain(f"cannot use the database {shown} ({_why(exc, settings)}): {check}")
    raise typer.Exit(1)


def _why(exc: BaseException, settings: Settings) -> str:
    """The cause in a few words: the driver's own error, without SQLAlchemy's wrapping."""
    from sqlalchemy.exc import DBAPIError

    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):
        return f"no answer in {settings.database_timeout_seconds:g} s"
    text = (cause.strerror if isinstance(cause, OSError) else None) or str(cause)
    return text.splitlines()[0] if text else type(cause).__name__


def secret_box(settings: Settings) -> SecretBox:
    from app import runtime

    try:
        return runtime.secret_box(settings)
    except runtime.ConfigurationError as exc:
        complain(str(exc))
        raise typer.Exit(2) from None


def in_transaction(work: Callable[[AsyncSession, SecretBox], Awaitable[T]]) -> T:
    """Run one unit of work in one transaction, committed when `work` returns."""

    async def run(
        sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, box: SecretBox
    ) -> T:
        async with sessionmaker.begin() as session:
            return await work(session, box)

    return _on_database(run, pool_size=1)


def with_wecom(
    work: Callable[[async_sessionmaker[AsyncSession], WecomClient, SecretBox], Awaitable[T]],
) -> T:
    """Run `work` with a sessionmaker (it opens its own transactions: a WeCom call it waits on
    is never made inside one) and a WeCom client, as `serve` has them."""
    from app.wecom.factory import open_client

    async def run(
        sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, box: SecretBox
    ) -> T:
        async with open_client(settings, sessionmaker, box) as client:
            return await work(sessionmaker, client, box)

    return _on_database(run, pool_size=2)


def _on_database(
    work: Callable[[async_sessionmaker[AsyncSession], Settings, SecretBox], Awaitable[T]],
    *,
    pool_size: int,
) -> T:
    """Run `work` on the database made ready (one line and exit 1 if it cannot be, or is
    lost while `work` runs), with the at-rest keys; its engine is disposed of after."""
    from app.db import create_engine, create_sessionmaker

    settings = current_settings()
    url = prepare_database(settings)
    box = secret_box(settings)

    async def run() -> T:
        engine = create_engine(url, settings, pool_size=pool_size)
        try:
            return await work(create_sessionmaker(engine), settings, box)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except Exception as exc:
        if not _database_refused(exc):
            raise
        _no_database(url, settings, exc)  # lost since it was checked


def complain(text: str) -> None:
    """As it is: no rich markup, so `[a-z0-9_-]` in a message is printed, not swallowed."""
    console.print(text, style="red", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def refusals() -> Iterator[None]:
    """A service's refusal as `field: message` lines, and the exit code scripts branch on:
    2 for invalid input, 1 for the rest (not found, conflict)."""
    try:
        yield
    except Invalid as exc:
        for error in exc.errors:
            complain(str(error))
        raise typer.Exit(2) from None
    except AppError as exc:
        complain(exc.detail)
        raise typer.Exit(1) from None


def add_row(table: Table, *cells: str) -> None:
    """Cells as text: a table would read `[…]` in a label or a rule as rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


class _Listed(Protocol):
    @property
    def id(self) -> int: ...


def print_page(table: Table, rows: Sequence[_Listed], limit: int) -> None:
    """A page of a list (`--after ID --limit N`), and when it is full the command for the
    next one."""
    console.print(table)
    if len(rows) == limit:
        console.print(f"more: the same with --after {rows[-1].id}", highlight=False)


def given(**options: object) -> dict[str, object]:
    """The options given on the command line: a patch changes only those."""
    return {name: value for name, value in options.items() if value is not None}


def secrets_given(**options: str | None) -> dict[str, str]:
    """The secrets given; each given as `-` is read from stdin, one line each in the order
    of the options, so that none has to be in the shell's history or in `ps`."""
    found = {}
    for name, value in options.items():
        if value == "-":
            line = sys.stdin.readline()
            if not line:
                raise Invalid([FieldError(name, "given as `-`, but stdin has no line for it")])
            value = line.rstrip("\r\n")
        if value is not None:
            found[name] = value
    return found
