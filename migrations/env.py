import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import get_settings
from app.models import Base
from app.runtime import database_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url if url else database_url(get_settings())


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


_LOCK = "hashtext('wecom-hub migrations')"


def _run(connection: Connection) -> None:
    # Both per session, not per transaction, so that they hold across the commits of a
    # migration that builds indexes CONCURRENTLY (outside any transaction, so callbacks are
    # never blocked while a big table is indexed).
    # Never queue behind a long lock on a busy database: fail and let devops retry.
    connection.exec_driver_sql("SET lock_timeout = '5s'")
    # Replicas starting together migrate one after the other, not over each other.
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({_LOCK})")
    connection.commit()
    try:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.rollback()  # whatever a failed migration left open
        connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK})")
        connection.commit()


async def run_migrations_online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
