"""Engine and session factory. Created in the lifespan or a CLI command, never at import."""

import json

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import Settings


def create_engine(
    url: str, settings: Settings, *, pool_size: int = 10, pre_ping: bool = True
) -> AsyncEngine:
    """pre_ping checks each connection as it leaves the pool, so the first request after a
    database restart does not fail; background loops, which retry anyway, skip that round
    trip (it was a sixth of a busy worker's time)."""
    timeout = settings.database_timeout_seconds
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout,
        pool_pre_ping=pre_ping,
        connect_args={"timeout": timeout, "command_timeout": timeout},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# create_pool's connections (its docstring says why). Set per connection, not as a
# startup parameter: PgBouncer refuses unknown ones (in session mode; its transaction mode
# cannot serve wecom-hub at all, which LISTENs).
_NO_BITMAP_SCANS = "SET enable_bitmapscan = off"


async def _prepare_queue_connection(connection: asyncpg.Connection) -> None:
    """jsonb as Python values, and no bitmap scans."""
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )
    await connection.execute(_NO_BITMAP_SCANS)


async def reset_if_needed(connection: asyncpg.Connection) -> None:
    """asyncpg's own reset is a round trip on every release (UNLISTEN, RESET ALL, …); our
    pools run single statements that leave nothing behind, except after an interruption."""
    if connection.is_in_transaction():
        await connection.reset()


def create_pool(dsn: str, settings: Settings, *, max_size: int) -> asyncpg.Pool:
    """A plain asyncpg pool, for hot paths where SQLAlchemy's per-statement work shows
    (a claim, a status update: one prepared statement, one round trip, no transaction
    block). jsonb comes and goes as Python values. Await it to open; connections are made
    lazily, so a loop can start while Postgres is down.

    Its connections make no bitmap scans (ADR 0008, fourth round). A claim reads a queue
    whose index is mostly entries of rows that have moved on (an action's outcome takes it
    out of the index and leaves its entry behind): dead until a vacuum, which autovacuum runs at
    most once a minute. A bitmap scan visits the heap for every one of them on every claim
    (2-6 ms with 10,000 of them); an index scan in the claim's order marks each one dead the
    first time it finds it so, and later claims skip it without a heap visit (0.1 ms). The
    planner cannot tell the two apart: it estimates from live rows. The other statements
    on these pools read rows by key or one index's range, where an index scan does as well."""
    timeout = settings.database_timeout_seconds
    return asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        timeout=timeout,
        command_timeout=timeout,
        init=_prepare_queue_connection,
        reset=reset_if_needed,  # asyncpg rolls back before it: the SET above stays
    )


class DatabaseUnavailable(Exception):
    """Postgres could not be reached or did not answer in time."""


def asyncpg_dsn(url: str) -> str:
    """The SQLAlchemy URL as plain asyncpg wants it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# What a lost, refused or timed-out connection raises, through SQLAlchemy or asyncpg.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    OSError,
    TimeoutError,
)


def is_unavailable(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, UNAVAILABLE_ERRORS)


def upgrade_database(url: str) -> None:
    """Run the Alembic migrations to head. Blocking; call it before the event loop starts."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, "head")
