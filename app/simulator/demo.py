"""`wecom-hub demo`: the whole loop on one machine, with a simulated WeCom.

wecom-hub serves on its port as usual; the simulator serves beside it and stands in for
qyapi.weixin.qq.com; a demo app is registered with both; a new customer is simulated
(contact way state `spring_promo`); and what wecom-hub made of it is printed: the stored
event, the customer, the relation, the enrichment call to WeCom.
"""

import asyncio
import secrets
import socket
import string
import threading
import time
from dataclasses import dataclass

import httpx
import uvicorn
from rich.console import Console
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.automations.store import RuleSpec, create_rule
from app.config import Settings
from app.crypto.at_rest import SecretBox
from app.db import create_engine, create_sessionmaker
from app.main import create_app
from app.simulator.sender import Scenario, Target, send_one
from app.simulator.server import create_sim_app
from app.simulator.state import SimState
from app.wecom_apps import AppSpec, add_app, find_app, load_credentials, open_keys

DEMO_SLUG = "demo"


@dataclass(frozen=True)
class DemoApp:
    corp_id: str
    secret: str


def _random(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


async def ensure_demo_app(engine: AsyncEngine, box: SecretBox) -> DemoApp:
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
        credentials = await load_credentials(session, box, found.id)
    return DemoApp(credentials.corp_id, credentials.secret)


def start_simulator(demo: DemoApp, port: int) -> str:
    state = SimState()
    state.seed(demo.corp_id, members=3, customers_per_member=5, groups=2)
    state.corp(demo.corp_id).secrets.add(demo.secret)
    server = uvicorn.Server(
        uvicorn.Config(create_sim_app(state), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


async def show_the_loop(
    engine: AsyncEngine, box: SecretBox, hub: str, sim: str, console: Console
) -> None:
    async with create_sessionmaker(engine)() as session:
        app = await find_app(session, DEMO_SLUG)
        assert app is not None
        keys = open_keys(app, box)
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(100):
            try:
                if (await http.get(f"{hub}/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        target = Target(f"{hub}/callback/{DEMO_SLUG}", keys.crypt, sim)
        answer = await send_one(http, target, "add-customer", Scenario(state="spring_promo"))
    console.print(
        f"\n1. WeCom (simulated) → POST {hub}/callback/{DEMO_SLUG}: answered {answer}",
        highlight=False,
        soft_wrap=True,
    )

    async with engine.connect() as connection:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = await connection.scalar(
                text("SELECT status FROM actions ORDER BY id DESC LIMIT 1")
            )
            pending = await connection.scalar(
                text("SELECT count(*) FROM actions WHERE status IN ('pending', 'running')")
            )
            if status is not None and not pending:
                break
            await asyncio.sleep(0.1)
        queries = {
            "2. stored event": "SELECT id, family || '/' || type AS type, status FROM events "
            "ORDER BY id DESC LIMIT 1",
            "3. customer": "SELECT external_userid, name, enriched_at IS NOT NULL AS enriched "
            "FROM external_contacts ORDER BY first_seen_at DESC NULLS LAST LIMIT 1",
            "4. relation": "SELECT userid, status, state, added_at FROM follows "
            "ORDER BY added_at DESC NULLS LAST LIMIT 1",
            "5. welcome": "SELECT kind, status, reason, attempts FROM actions "
            "WHERE kind = 'welcome' ORDER BY id DESC LIMIT 1",
            "6. enrichment": "SELECT kind, status, attempts FROM actions "
            "WHERE kind = 'enrich_contact' ORDER BY id DESC LIMIT 1",
        }
        for title, query in queries.items():
            row = (await connection.execute(text(query))).mappings().first()
            shown = ", ".join(f"{k}={v}" for k, v in (row or {}).items())
            console.print(f"{title}: {shown}", highlight=False, soft_wrap=True)
    console.print(
        f"\nwecom-hub: {hub}  (callback URL of an app: {hub}/callback/<slug>)\n"
        f"simulated WeCom: {sim}  (every API call it got: {sim}/sim/calls)\n"
        f"more: wecom-hub sim send join-group --app {DEMO_SLUG} --hub {hub} --sim {sim}\n"
        "real WeCom: wecom-hub apps add --slug S --corp-id C --token T --aes-key K --secret X,"
        " then wecom-hub serve\nCtrl-C stops.",
        highlight=False,
        soft_wrap=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_demo(
    settings: Settings, url: str, box: SecretBox, *, port: int, sim_port: int, console: Console
) -> None:
    engine = create_engine(url, settings, pool_size=2)
    try:
        demo = await ensure_demo_app(engine, box)
        sim = start_simulator(demo, sim_port)
        configured = settings.model_copy(update={"wecom_api_base_url": sim})
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(configured, database_url=url),
                host="127.0.0.1",
                port=port,
                log_config=None,
                access_log=False,
            )
        )
        hub = f"http://127.0.0.1:{port}"
        shown = asyncio.create_task(show_the_loop(engine, box, hub, sim, console))
        await server.serve()
        shown.cancel()
    finally:
        await engine.dispose()
