"""What a new user meets first, as they meet it: real processes, real ports, real Postgres
(issue 10, "First run"). A quick `--help`; one line, not a traceback, for a database that
cannot be reached or a port in use; a demo that runs again, apart from the user's apps, and
stops quietly; `sim send` and `sim serve` that work with a hub started as the README says."""

import asyncio
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.simulator.state import SimApp
from tests.conftest import RegisteredApp, Simulator, random_app, register
from tests.process_helpers import WECOM_HUB, free_port, stop, stop_async, wait_until
from tests.processing_helpers import wait_for
from tests.test_automations import rule

# What `--help` must not import: each costs a good part of a second on a small machine.
HEAVY_MODULES = (
    "aiohttp",
    "alembic",
    "asyncpg",
    "fastapi",
    "httpx",
    "sqlalchemy",
    "uvicorn",
    "app.config",
    "app.main",
    "app.models",
    "app.simulator.server",
    "app.wecom.client",
)


def _clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    return env | {f"WECOM_HUB_{name.upper()}": value for name, value in settings.items()}


def _hub_env(settings: Settings, simulator: Simulator | None = None) -> dict[str, str]:
    assert settings.database_url and settings.secret_key
    env = _clean_env(
        database_url=settings.database_url,
        secret_key=settings.secret_key.get_secret_value(),
        log_level="WARNING",
    )
    if simulator is not None:
        env["WECOM_HUB_WECOM_API_BASE_URL"] = simulator.url
    return env


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WECOM_HUB, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@contextmanager
def _closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused for as long as it is held."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("args", [["--help"], ["apps", "--help"], ["sim", "send", "--help"]])
def test_help_imports_none_of_the_heavy_modules(args: list[str]) -> None:
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from app.cli import cli\n"
            f"try: cli({args!r})\n"
            "except SystemExit: pass\n"
            f"print('imported:', sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))",
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Usage:" in shown.stdout
    assert "imported: []" in shown.stdout, shown.stdout


@pytest.mark.parametrize(
    "command",
    [
        "apps list",
        f"apps add --slug shop --corp-id ww1 --token T0ken --secret s --aes-key {'A' * 43}",
        "rules list",
        "apikeys list",
        "migrate",
        "serve --port 0",
        "worker",
        "sync --app shop",
        "sim serve --port 0",
        "sim send message --app shop --sim=",
    ],
)
def test_a_database_that_cannot_be_reached_is_one_line(command: str) -> None:
    with _closed_port() as port:
        url = f"postgresql://wecom:hunter2@127.0.0.1:{port}/wecom"
        done = _run(
            *command.split(), env=_clean_env(database_url=url, secret_key=secrets.token_hex(16))
        )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert output.strip().count("\n") == 0, output
    assert f"postgresql://wecom:***@127.0.0.1:{port}/wecom" in output
    assert "connection refused" in output and "WECOM_HUB_DATABASE_URL" in output
    assert "hunter2" not in output


def test_serve_on_a_port_in_use_says_so_before_claiming_to_listen(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run("serve", "--port", str(port), env=_hub_env(settings))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {port} on 127.0.0.1 is in use" in done.stdout
    assert "--port" in done.stdout and "listening" not in done.stdout


# The demo ---------------------------------------------------------------------------------


@contextmanager
def _demo(env: dict[str, str], port: int, sim_port: int) -> Iterator[list[str]]:
    """A demo, running until its loop is shown; then stopped with Ctrl-C (SIGINT). The lines
    it printed, complete once the block has ended."""
    demo = subprocess.Popen(
        [WECOM_HUB, "demo", "--port", str(port), "--sim-port", str(sim_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the last line says how to stop it
            lines.append(line)
            if "Ctrl-C stops." in line:
                break
        yield lines
    finally:
        stop(demo, signal.SIGINT, 30)
        assert demo.stdout is not None
        with demo.stdout:
            rest = demo.stdout.read()
        lines.append(rest)
        lines.append(f"exit code {demo.returncode}")


def _shown(lines: list[str], title: str) -> str:
    [line] = [line for line in lines if line.startswith(title)]
    return line


def _group_enriched(sim: str) -> bool:
    calls = httpx.get(f"{sim}/sim/calls", params={"api": "externalcontact/groupchat/get"}).json()
    return any(call["errcode"] == 0 for call in calls)


def _join_group_during_the_demo(env: dict[str, str], port: int, sim_port: int) -> None:
    """The command the demo suggests, while it runs: the group join is enriched."""
    sim = f"http://127.0.0.1:{sim_port}"
    joined = _run(
        *("sim", "send", "join-group", "--app", "demo"),
        *("--hub", f"http://127.0.0.1:{port}", "--sim", sim),
        env=env,
    )
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert wait_until(lambda: _group_enriched(sim), 15), "the group was not enriched in time"


def _stats(url: str, key: str) -> dict[str, int]:
    answer = httpx.get(url, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _scan_the_demos_channel(env: dict[str, str], port: int, sim_port: int, lines: str) -> None:
    """What the demo prints for its channel, used while it runs: the code's image with its
    key, the `sim scan` it suggests, and the customer in the channel's numbers."""
    [(key, qr)] = re.findall(r"its code: curl -H 'Authorization: Bearer (\S+)' (\S+) ", lines)
    image = httpx.get(qr, headers={"Authorization": f"Bearer {key}"})
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), image.text
    [scan] = re.findall(r" sim scan (.+?)  \(", lines)
    scanned = _run("sim", "scan", *scan.split(), env=env)
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    stats = qr.removesuffix("/qr.png") + "/stats"
    assert wait_until(lambda: _stats(stats, key)["welcomed"] == 4, 15), _stats(stats, key)
    assert _stats(stats, key)["added"] == 4


def _try_what_the_demo_suggests(env: dict[str, str], port: int, sim_port: int, lines: str) -> None:
    _join_group_during_the_demo(env, port, sim_port)
    _scan_the_demos_channel(env, port, sim_port, lines)


def test_the_demo_runs_again_apart_from_the_users_apps_and_stops_quietly(
    tmp_path: Path,
) -> None:
    env = _clean_env(data_dir=str(tmp_path / "data"))
    runs = []
    for during in (None, _try_what_the_demo_suggests):
        port, sim_port = free_port(), free_port()
        with _demo(env, port, sim_port) as lines:
            if during is not None:
                during(env, port, sim_port, "".join(lines))
        output = "".join(lines)
        assert lines[-1] == "exit code 0", output
        assert "Traceback" not in output and "CancelledError" not in output, output
        assert "answered 200 success" in output, output
        assert "type=change_external_contact/add_external_contact, status=processed" in output
        assert "kind=welcome, status=succeeded, reason=rule 'spring campaign'" in output
        assert "kind=enrich_contact, status=succeeded" in output
        # The loop of issue 12: a channel, customers who scan it, a broadcast to them.
        assert "name=门店A, status=active, state=ch_" in _shown(lines, "7. channel:"), output
        assert "3 customers scanned it" in _shown(lines, "8."), output
        # Only this run's customers: an earlier run's channel and customers are not counted.
        assert "channel numbers: added=3, active=3, welcomed=3, tagged=3" in output, output
        assert "dry run: audience=3 (member000=1, member001=1, member002=1)" in output, output
        assert (
            "status=completed, audience=3, tasks=3, confirmed=3, sent=3, not_friend=0, "
            "over_limit=0, failed=0, pending=0"
        ) in output, output
        runs.append(lines)

    # Each run shows the event, customer, channel and broadcast it made itself, not the
    # latest of an earlier run.
    titles = ("2.", "3.", "7.", "   broadcast ")
    first, second = ([_shown(lines, title) for title in titles] for lines in runs)
    assert all(one != other for one, other in zip(first, second, strict=True))
    # The demo's database is its own: the user's data folder has none beside it.
    assert (tmp_path / "data" / "demo" / "postgres").is_dir()
    assert not (tmp_path / "data" / "postgres").exists()


# sim send and sim serve against a hub started as the README says ----------------------


@pytest.fixture
async def served(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> AsyncIterator[str]:
    """`wecom-hub serve` in a process of its own, WeCom played by the simulator, which
    knows the app as WeCom's console would."""
    simulator.state.add_app(
        SimApp(
            wecom_app.slug,
            wecom_app.corp_id,
            secret=wecom_app.secret,
            token=wecom_app.token,
            aes_key=wecom_app.aes_key,
        )
    )
    await rule(settings, "reply", {"keywords": ["菜单"]}, {"text": "1. 下单 2. 查询"})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = await asyncio.create_subprocess_exec(
        WECOM_HUB,
        *("serve", "--port", str(port)),
        env=_hub_env(settings, simulator),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{base}/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await wait_for(ready, within=60)
        yield base
    finally:
        await stop_async(serve, signal.SIGTERM, 30)


def _send(
    settings: Settings, simulator: Simulator, hub: str, app: RegisteredApp, *args: str
) -> subprocess.CompletedProcess[str]:
    return _run(
        *("sim", "send", *args, "--app", app.slug, "--hub", hub, "--sim", simulator.url),
        env=_hub_env(settings),
    )


async def _action(db: asyncpg.Connection, kind: str) -> asyncpg.Record:
    """The action of this kind, once it has ended."""

    async def ended() -> bool:
        status = await db.fetchval("SELECT status FROM actions WHERE kind = $1", kind)
        return status not in (None, "pending", "running")

    await wait_for(ended, within=15)
    found = await db.fetchrow("SELECT * FROM actions WHERE kind = $1", kind)
    assert found is not None
    return found


async def test_sim_send_join_group_is_enriched_from_what_the_simulator_was_told(
    settings: Settings,
    simulator: Simulator,
    served: str,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    sent = _send(settings, simulator, served, wecom_app, "join-group", "--customer", "wmJOINER")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "1 answered 200" in sent.stdout
    enriched = await _action(db, "enrich_group")
    assert (enriched["status"], enriched["error_code"]) == ("succeeded", None)
    members = await db.fetch(
        "SELECT member_id FROM group_members WHERE chat_id = $1", "wrSIMULATEDGROUP"
    )
    assert "wmJOINER" in {m["member_id"] for m in members}


async def test_sim_send_counts_a_passive_reply_as_answered(
    settings: Settings, simulator: Simulator, served: str, wecom_app: RegisteredApp
) -> None:
    sent = _send(settings, simulator, served, wecom_app, "message", "--content", "菜单")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "1 answered 200 (1 with a passive reply)" in sent.stdout


async def test_sim_send_kf_message_is_read_with_its_content_and_answered(
    settings: Settings,
    simulator: Simulator,
    served: str,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    sent = _send(
        settings,
        simulator,
        served,
        wecom_app,
        "kf-message",
        "--content",
        "菜单",
        "--open-kfid",
        "wkA",
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    synced = await _action(db, "kf_sync")
    assert (synced["status"], synced["error_code"]) == ("succeeded", None)
    replied = await _action(db, "kf_reply")
    assert replied["status"] == "succeeded"
    [reply] = [c for c in simulator.state.calls if c.api == "kf/send_msg"]
    assert (reply.body["open_kfid"], reply.body["text"]) == ("wkA", {"content": "1. 下单 2. 查询"})


def test_sim_send_fails_when_the_hub_is_down(settings: Settings, wecom_app: RegisteredApp) -> None:
    with _closed_port() as port:
        sent = _run(
            *("sim", "send", "message", "--app", wecom_app.slug, "--count", "2"),
            *("--hub", f"http://127.0.0.1:{port}", "--sim", ""),
            env=_hub_env(settings),
        )
    assert sent.returncode == 1, sent.stdout + sent.stderr
    assert "0 answered 200; 2 failed: wecom-hub at" in sent.stdout


async def test_sim_serve_learns_apps_registered_after_it_started(
    settings: Settings, db: asyncpg.Connection
) -> None:
    port = free_port()
    sim = f"http://127.0.0.1:{port}"
    serve = await asyncio.create_subprocess_exec(
        WECOM_HUB,
        *("sim", "serve", "--port", str(port)),
        env=_hub_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=sim) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/sim/calls")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, within=30)
            app = random_app("late")
            await register(settings, app)
            token = await http.get(
                "/cgi-bin/gettoken", params={"corpid": app.corp_id, "corpsecret": app.secret}
            )
            assert token.json()["errcode"] == 0, token.text
            keys = (await http.get("/sim/apps/late")).json()
            assert keys == {"corp_id": app.corp_id, "token": app.token, "aes_key": app.aes_key}
    finally:
        await stop_async(serve, signal.SIGTERM, 30)
        assert serve.stdout is not None
        output = await serve.stdout.read()
    assert serve.returncode == 0, output.decode()
    assert f"corp {app.corp_id} (app late)" in output.decode()
