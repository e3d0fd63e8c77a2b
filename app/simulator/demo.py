"""`wecom-hub demo`: the whole loop on one machine, with a simulated WeCom.

The demo keeps its own embedded Postgres and key in `<data folder>/demo`: its app, rule,
customers and events never appear beside the user's real ones, and a database named by
WECOM_HUB_DATABASE_URL is never touched. wecom-hub serves on its port as usual; the simulator
serves beside it, in the same process, and stands in for qyapi.weixin.qq.com (it knows the
demo app as WeCom's console would, so `sim send --app demo` works meanwhile); a new customer
is simulated (contact way state `spring_promo`); and what wecom-hub made of that customer is
printed: the stored event, the customer, the relation, the welcome, the enrichment call.
"""

import asyncio
import secrets
import signal
import socket
import string
import time
from collections.abc import Callable, Generator, Iterable
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.automations.store import RuleSpec, create_rule
from app.config import Settings
from app.crypto import WXBizMsgCrypt
from app.crypto.at_rest import SecretBox
from app.db import create_engine, create_sessionmaker
from app.main import create_app
from app.simulator.cli import sim_app
from app.simulator.sender import Scenario, Target, send_one
from app.simulator.server import create_sim_app
from app.simulator.state import SimApp, SimState
from app.wecom_apps import AppSpec, add_app, find_app

DEMO_SLUG = "demo"
SETTLE_SECONDS = 30.0  # beyond a welcome's 20 s deadline: every action has ended by then
START_SECONDS = 30.0
STOP_SECONDS = 5  # open requests get this long after Ctrl-C


def demo_settings(settings: Settings) -> Settings:
    """The user's settings, but with a database and key of the demo's own."""
    return settings.model_copy(
        update={
            "data_dir": settings.data_dir / "demo",
            "database_url": None,
            "secret_key": None,
            "secret_key_file": None,
            "database_password_file": None,
            "previous_secret_keys": None,
        }
    )


def _random(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


async def ensure_demo_app(engine: AsyncEngine, box: SecretBox) -> SimApp:
    """The demo app and its welcome rule, made on the first run and kept for the next."""
    async with create_sessionmaker(engine).begin() as session:
        found = await find_app(session, DEMO_SLUG)
        if found is None:
            spec = AppSpec.model_validate(
                {
                    "slug": DEMO_SLUG,
                    "corp_id": "wwdemo" + secrets.token_hex(6),
                    "token": _random(32),
                    "aes_key": _random(43),
                    "secret": _random(43),
                    "label": "demo (simulated WeCom)",
                }
            )
            found = await add_app(session, box, spec)
            await create_rule(
                session,
                RuleSpec(
                    kind="welcome",
                    name="spring campaign",
                    app=DEMO_SLUG,
                    match={"state": "spring", "state_mode": "prefix"},
                    content={
                        "text": "你好 {customer_name}，春季活动欢迎你！",
                        "attachments": [
                            {
                                "msgtype": "link",
                                "title": "春季活动",
                                "url": "https://example.com/spring",
                            }
                        ],
                    },
                ),
                media_dir=None,
            )
        return sim_app(found, box)


class _Server(uvicorn.Server):
    """A server that leaves signals to the demo. uvicorn's own handlers would re-raise the
    signal once it has stopped, which cancels the demo in the middle of its cleanup (a
    CancelledError traceback on Ctrl-C)."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _server(app: Any) -> _Server:
    config = uvicorn.Config(
        app, log_config=None, access_log=False, timeout_graceful_shutdown=STOP_SECONDS
    )
    return _Server(config)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


# The new customer's rows, found by its id (and its event's): never an earlier run's.
_SETTLED = text(
    "SELECT e.id, e.status = 'processed'"
    " AND count(a.id) FILTER (WHERE a.status IN ('pending', 'running')) = 0 AS settled"
    " FROM events e LEFT JOIN actions a ON a.event_id = e.id"
    " WHERE e.payload ->> 'ExternalUserID' = :customer GROUP BY e.id"
)
_SHOWN = {
    "2. stored event": "SELECT id, family || '/' || type AS type, status FROM events "
    "WHERE id = :event",
    "3. customer": "SELECT external_userid, name, enriched_at IS NOT NULL AS enriched "
    "FROM external_contacts WHERE external_userid = :customer",
    "4. relation": "SELECT userid, status, state, added_at FROM follows "
    "WHERE external_userid = :customer",
    "5. welcome": "SELECT kind, status, reason, attempts FROM actions "
    "WHERE kind = 'welcome' AND event_id = :event",
    "6. enrichment": "SELECT kind, status, attempts FROM actions "
    "WHERE kind = 'enrich_contact' AND event_id = :event",
}


async def _settled_event(connection: AsyncConnection, customer: str) -> int | None:
    """The id of the customer's event once it is processed and its actions have ended (or
    the bound has passed: what is there is shown as it is)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    event = None
    while time.monotonic() < deadline:
        row = (await connection.execute(_SETTLED, {"customer": customer})).first()
        if row is not None:
            event = int(row.id)
            if row.settled:
                break
        await asyncio.sleep(0.1)
    return event


async def show_the_loop(
    engine: AsyncEngine,
    app: SimApp,
    *,
    hub: str,
    sim: str,
    started: Callable[[], bool],
    command: str,
    console: Console,
) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not started():
        if time.monotonic() > deadline:
            raise TimeoutError(f"wecom-hub or the simulator did not start in {START_SECONDS} s")
        await asyncio.sleep(0.05)
    customer = f"wm{secrets.token_hex(12)}"
    crypt = WXBizMsgCrypt(token=app.token, encoding_aes_key=app.aes_key, receive_id=app.corp_id)
    async with httpx.AsyncClient(timeout=10) as http:
        target = Target(f"{hub}/callback/{DEMO_SLUG}", crypt, sim)
        answer = await send_one(
            http, target, "add-customer", Scenario(customer=customer, state="spring_promo")
        )
    console.print(
        f"\n1. WeCom (simulated) → POST {hub}/callback/{DEMO_SLUG}: answered {answer}",
        highlight=False,
        soft_wrap=True,
    )
    async with engine.connect() as connection:
        event = await _settled_event(connection, customer)
        for title, query in _SHOWN.items():
            params = {"customer": customer, "event": event}
            row = (await connection.execute(text(query), params)).mappings().first()
            shown = ", ".join(f"{k}={v}" for k, v in (row or {}).items())
            console.print(f"{title}: {shown}", highlight=False, soft_wrap=True)
    console.print(
        f"\nwecom-hub: {hub}  (callback URL of an app: {hub}/callback/<slug>)\n"
        f"simulated WeCom: {sim}  (every API call it got: {sim}/sim/calls)\n"
        f"more: {command} sim send join-group --app {DEMO_SLUG} --hub {hub} --sim {sim}\n"
        f"real WeCom: {command} apps add --slug S --corp-id C --token T --aes-key K --secret X,"
        f" then {command} serve (the demo's app and data stay in its own database)\n"
        "Ctrl-C stops.",
        highlight=False,
        soft_wrap=True,
    )


async def run_demo(
    settings: Settings,
    url: str,
    box: SecretBox,
    *,
    hub_socket: socket.socket,
    sim_socket: socket.socket,
    command: str,
    console: Console,
) -> None:
    """Serve wecom-hub and the simulator on the given sockets until SIGINT or SIGTERM."""
    engine = create_engine(url, settings, pool_size=2)
    try:
        app = await ensure_demo_app(engine, box)
        state = SimState()
        state.seed(app.corp_id, members=3, customers_per_member=5, groups=2)
        state.add_app(app)
        hub, sim = _address(hub_socket), _address(sim_socket)
        configured = settings.model_copy(update={"wecom_api_base_url": sim})
        servers = {
            hub_socket: _server(create_app(configured, database_url=url)),
            sim_socket: _server(create_sim_app(state)),
        }
        async with asyncio.TaskGroup() as group:
            for sock, server in servers.items():
                group.create_task(server.serve(sockets=[sock]))
            shown = group.create_task(
                show_the_loop(
                    engine,
                    app,
                    hub=hub,
                    sim=sim,
                    started=lambda: all(s.started for s in servers.values()),
                    command=command,
                    console=console,
                )
            )
            _stop_on_signals(shown, servers.values())
    finally:
        await engine.dispose()


def _stop_on_signals(shown: asyncio.Task[None], servers: Iterable[uvicorn.Server]) -> None:
    def stop() -> None:
        shown.cancel()
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
