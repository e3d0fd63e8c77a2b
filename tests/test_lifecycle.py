"""A `wecom-hub worker` stops on SIGTERM while its calls to WeCom are in flight: promptly,
cleanly, every time, with nothing left held (issue 10: once in four stops it used to hang).
A command killed with SIGKILL leaves no embedded Postgres running for ever."""

import asyncio
import os
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

import asyncpg
import pytest

from app.config import Settings
from app.runtime import _alive
from app.simulator.state import Fault
from tests.conftest import RegisteredApp, Simulator
from tests.process_helpers import WECOM_HUB, answers_ok, free_port, stop, wait_until
from tests.processing_helpers import wait_for

pytestmark = pytest.mark.serial  # stops are timed, with calls to WeCom in flight

STOPS = 3
STOP_BOUND_SECONDS = 12.0  # shutdown_seconds (10) and the process's own exit


def worker_env(settings: Settings, simulator: Simulator) -> dict[str, str]:
    assert settings.database_url and settings.secret_key
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env |= {
        "WECOM_HUB_DATABASE_URL": settings.database_url,
        "WECOM_HUB_SECRET_KEY": settings.secret_key.get_secret_value(),
        "WECOM_HUB_WECOM_API_BASE_URL": simulator.url,
        "WECOM_HUB_LOG_LEVEL": "WARNING",
    }
    return env


async def succeeded(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM actions WHERE status = 'succeeded'")
    return count


def more_succeeded(db: asyncpg.Connection, *, than: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await succeeded(db) >= than

    return check


async def test_a_worker_busy_with_wecom_calls_stops_on_sigterm_every_time(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    corp = simulator.state.corp(wecom_app.corp_id)
    corp.secrets.add(wecom_app.secret)
    # Enough that no stop finds the work done: a worker makes up to 160 calls a second here
    # (eight at a time a corp, 50 ms each). With 600, full runs now and then found all of
    # them done before a later stop (the stop before came seconds late; why, not found).
    simulator.state.seed(wecom_app.corp_id, members=1, customers_per_member=4000, groups=0)
    # Each call takes a while, so that a stop always finds some in flight.
    simulator.state.faults = [Fault(api="externalcontact/get", delay=0.05)]
    await db.execute(
        "INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key)"
        " SELECT 'enrich_contact', a.id, a.corp_id, c, 'enrich:' || c"
        " FROM apps a, unnest($1::text[]) AS c",
        list(corp.contacts),
    )

    for _ in range(STOPS):
        # Its output goes to a file, not a pipe nobody reads until the end: a worker that
        # logs more than a pipe holds would block on its next line, and not stop on time.
        with tempfile.TemporaryFile() as log:
            worker = await asyncio.create_subprocess_exec(
                WECOM_HUB,
                "worker",
                "--only",
                "actions",
                env=worker_env(settings, simulator),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                left = await db.fetchval("SELECT count(*) FROM actions WHERE status = 'pending'")
                assert left > 100, f"only {left} actions left: the test needs more to stop"
                more = more_succeeded(db, than=await succeeded(db) + 10)
                await wait_for(more, within=30, context=lambda: _state(db, log))
                worker.send_signal(signal.SIGTERM)
                await asyncio.wait_for(worker.wait(), STOP_BOUND_SECONDS)
            finally:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
            output = _read(log)
        assert worker.returncode == 0, output
        assert "Traceback" not in output, output
        # Nothing is left held: another process may take over at once.
        assert await db.fetchval("SELECT count(*) FROM actions WHERE locked_by IS NOT NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM actions WHERE status = 'failed'") == 0


async def _state(db: asyncpg.Connection, log: IO[bytes]) -> str:
    """What the worker said, and what the actions and the database's sessions were doing,
    when progress stopped."""
    actions = await db.fetch(
        "SELECT status, locked_by IS NOT NULL AS held, locked_until > now() AS leased,"
        " next_attempt_at > now() AS later, error_code, count(*)"
        " FROM actions GROUP BY 1, 2, 3, 4, 5"
    )
    sessions = await db.fetch(
        "SELECT pid, application_name, state, wait_event_type, wait_event, left(query, 80) AS q"
        " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return "\n".join([_read(log), *(str(dict(row)) for row in [*actions, *sessions])])


def _read(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def _postmaster(pgdata: Path) -> int | None:
    """The embedded server's pid while its postmaster.pid says one."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def _stop_postgres(pgdata: Path) -> None:
    """Whatever failed, no server is left behind (fast shutdown, then kill)."""
    pid = _postmaster(pgdata)
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGINT)
    if not wait_until(lambda: not _alive(pid), 15):
        os.kill(pid, signal.SIGKILL)


def test_the_command_after_a_killed_one_stops_the_embedded_postgres_it_left(
    tmp_path: Path,
) -> None:
    """`kill -9` (or the OOM killer) gives a process no chance to stop the embedded server,
    and its pid stayed in the server's list of users for ever: no later command stopped it
    either. Now the next command takes the orphaned server over and stops it when it ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env |= {"WECOM_HUB_DATA_DIR": str(tmp_path / "d"), "WECOM_HUB_LOG_LEVEL": "WARNING"}
    pgdata = tmp_path / "d" / "postgres"
    port = free_port()
    serve = subprocess.Popen(
        [WECOM_HUB, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = wait_until(lambda: answers_ok(f"http://127.0.0.1:{port}/readyz"), 60)
        assert ready, "serve did not become ready"
        postmaster = _postmaster(pgdata)
        assert postmaster is not None
        serve.kill()
        serve.wait(10)
        assert _alive(postmaster)  # it outlived its owner

        listed = subprocess.run(
            [WECOM_HUB, "apps", "list"], env=env, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert wait_until(lambda: not _alive(postmaster), 15), "the orphan was not stopped"
        assert _postmaster(pgdata) is None
        assert "ended without stopping it" in listed.stderr, listed.stderr  # and says so

    finally:
        stop(serve, signal.SIGKILL, 10)
        _stop_postgres(pgdata)
