"""`wecom-hub demo`: the whole loop on one machine, with a simulated WeCom.

The demo keeps its own embedded Postgres and key in `<data folder>/demo`: its app, rule,
customers and events never appear beside the user's real ones, and a database named by
WECOM_HUB_DATABASE_URL is never touched. wecom-hub serves on its port as usual; the simulator
serves beside it, in the same process, and stands in for qyapi.weixin.qq.com (it knows the
demo app as WeCom's console would, so `sim send --app demo` works meanwhile); a new customer
is simulated (contact way state `spring_promo`); and what wecom-hub made of that customer is
printed: the stored event, the customer, the relation, the welcome, the enrichment call.

Then the private-domain loop of issue 12, through the same services the API uses: a channel
「门店A」 (a 联系我 code of the seeded members, with a welcome and a tag), a few customers
scanning it (their callbacks delivered over HTTP like the first), the channel's numbers, and
a broadcast (群发) to the channel's customers that the members confirm in the (simulated)
client, with its funnel. The simulated WeCom starts empty on each run, so the channel of an
earlier run has no code any more: it is removed and a new 「门店A」 made. The demo's API key
is made anew too (the earlier one revoked: only a key's hash is kept), for the curl lines.
"""

import asyncio
import dataclasses
import secrets
import signal
import socket
import string
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import uvicorn
from fastapi import FastAPI
from rich.console import Console
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import apikeys
from app.automations.store import RuleSpec, create_rule
from app.broadcasts import service as broadcasts
from app.broadcasts.spec import BroadcastSpec
from app.channels import service as channels
from app.channels.service import ChannelSpec, ChannelView, WelcomeIn
from app.config import Settings
from app.crypto import WXBizMsgCrypt
from app.crypto.at_rest import SecretBox
from app.db import create_engine, create_sessionmaker
from app.main import Hub, create_app
from app.models import ApiKey
from app.processing.enrichment import apply_tags
from app.queries.broadcasts import get_broadcast
from app.queries.channels import ChannelRef, channel_stats
from app.queries.stats import DEFAULT_TZ, stats_window
from app.simulator.cli import sim_app
from app.simulator.sender import Scenario, Target, scan, send_one
from app.simulator.server import create_sim_app
from app.simulator.state import SimApp, SimState
from app.wecom_apps import AppSpec, add_app, app_by_slug, find_app, load_credentials

DEMO_SLUG = "demo"
SETTLE_SECONDS = 30.0  # beyond a welcome's 20 s deadline: every action has ended by then
START_SECONDS = 30.0
STOP_SECONDS = 5  # open requests get this long after Ctrl-C
CHANNEL = "门店A"
SCANS = 3  # customers who scan the channel's code: one per seeded member
BROADCAST_SECONDS = 20.0  # bound for a broadcast's tasks, then for its results
KEY_NAME = "demo"
# How quickly the demo's broadcast is settled: the hub reads its results soon and often (the
# defaults wait a minute, then longer), and the simulated WeCom distributes a new mass
# message for half a second rather than two (its reads answer 41063 meanwhile).
POLL_SECONDS = 0.2
POLL_MAX_SECONDS = 0.5
DISTRIBUTING_SECONDS = 0.5


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
            "broadcast_poll_seconds": POLL_SECONDS,
            "broadcast_poll_max_seconds": POLL_MAX_SECONDS,
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


async def _settled_event(
    connection: AsyncConnection, customer: str, deadline: float | None = None
) -> int | None:
    """The id of the customer's event once it is processed and its actions have ended (or
    the bound has passed: what is there is shown as it is)."""
    deadline = time.monotonic() + SETTLE_SECONDS if deadline is None else deadline
    event = None
    while time.monotonic() < deadline:
        row = (await connection.execute(_SETTLED, {"customer": customer})).first()
        if row is not None:
            event = int(row.id)
            if row.settled:
                break
        await asyncio.sleep(0.1)
    return event


def _say(console: Console, line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True, markup=False)


async def _first_customer(
    engine: AsyncEngine, http: httpx.AsyncClient, target: Target, console: Console
) -> None:
    """Steps 1 to 6: a new customer, and what wecom-hub made of it."""
    customer = f"wm{secrets.token_hex(12)}"
    answer = await send_one(
        http, target, "add-customer", Scenario(customer=customer, state="spring_promo")
    )
    _say(console, f"\n1. WeCom (simulated) → POST {target.hub_url}: answered {answer}")
    async with engine.connect() as connection:
        event = await _settled_event(connection, customer)
        for title, query in _SHOWN.items():
            params = {"customer": customer, "event": event}
            row = (await connection.execute(text(query), params)).mappings().first()
            shown = ", ".join(f"{k}={v}" for k, v in (row or {}).items())
            _say(console, f"{title}: {shown}")


# The private-domain loop: a channel, its customers, a broadcast to them ----------------------


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The demo's key, and its channel with the name of the tag the channel adds."""

    key: str
    channel: ChannelView
    tag_name: str


async def _demo_key(hub: Hub) -> str:
    """A new write key named `demo` for the curl lines; the earlier runs' are revoked (a key
    is shown only once, so an earlier one is of no use)."""
    async with hub.sessionmaker.begin() as session:
        earlier = await session.scalars(
            select(ApiKey.id).where(ApiKey.name == KEY_NAME, ApiKey.revoked_at.is_(None))
        )
        for key_id in list(earlier):
            await apikeys.revoke_key(session, key_id)
        _, key = await apikeys.create_key(session, name=KEY_NAME, scope=apikeys.Scope.WRITE)
    return key


async def _first_tag(hub: Hub) -> tuple[str, str]:
    """The corp's tags read as `sync` reads them (get_corp_tag_list; a channel's tag must be
    one wecom-hub knows); the first one's id and name."""
    async with hub.sessionmaker() as session:
        app = await app_by_slug(session, DEMO_SLUG)
        credentials = await load_credentials(session, hub.box, app.id)
    body = await hub.wecom.call(credentials, "POST", "externalcontact/get_corp_tag_list", json={})
    groups = body.get("tag_group", [])
    async with hub.sessionmaker.begin() as session:
        await apply_tags(session, app.corp_id, groups)
    first = groups[0]["tag"][0]
    return str(first["id"]), str(first["name"])


async def _new_channel(hub: Hub, members: Sequence[str], tag: str) -> ChannelView:
    """「门店A」 as `POST /api/v1/channels` makes it. An earlier run's is removed first: its
    code was in that run's simulated WeCom, which is gone (WeCom answers 41044 for it)."""
    wecom = channels.Wecom(hub.wecom, hub.box)
    async with hub.sessionmaker.begin() as session:
        for earlier in await channels.list_channels(session, app=DEMO_SLUG):
            if earlier.name == CHANNEL:
                await channels.delete_channel(session, wecom, earlier.id)
    spec = ChannelSpec(
        name=CHANNEL,
        app=DEMO_SLUG,
        userids=list(members),
        welcome=WelcomeIn(text=f"你好 {{customer_name}}，欢迎光临{CHANNEL}！"),
        add_tags=[tag],
    )
    return await channels.create_channel(hub.sessionmaker, wecom, spec)


async def _prepare(hub: Hub, members: Sequence[str]) -> Prepared:
    """The key and the channel, made before the first customer: wecom-hub reads its rules
    when its first event needs them and keeps them for a few seconds (RuleCache), so a
    channel made later would welcome and tag only the customers of a few seconds on."""
    key = await _demo_key(hub)
    tag, tag_name = await _first_tag(hub)
    return Prepared(key, await _new_channel(hub, members, tag), tag_name)


async def _scanned(
    engine: AsyncEngine, http: httpx.AsyncClient, target: Target, config_id: str
) -> tuple[list[str], set[str]]:
    """SCANS customers scan the code; each callback is delivered, then (bounded) processed
    with its actions ended. The members they were added to, and the hub's answers."""
    members, answers, customers = [], set(), []
    for _ in range(SCANS):
        scanned, answer = await scan(http, target, config_id)
        members.append(scanned.userid)
        answers.add(str(answer))
        customers.append(scanned.external_userid)
    deadline = time.monotonic() + SETTLE_SECONDS
    async with engine.connect() as connection:
        for customer in customers:
            await _settled_event(connection, customer, deadline)
    return members, answers


async def _channel_numbers(hub: Hub, channel: ChannelView) -> str:
    async with hub.sessionmaker() as session:
        window = stats_window(
            since=None, until=None, tz=DEFAULT_TZ, corp_id=channel.corp_id, now=datetime.now(UTC)
        )
        totals, _ = await channel_stats(
            session, ChannelRef(channel.corp_id, channel.state, channel.tag_rule_id), window
        )
    shown = ("added", "active", "welcomed", "tagged")
    return ", ".join(f"{name}={getattr(totals, name)}" for name in shown)


_TASKS = text(
    "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,"
    " coalesce(array_agg(msgid) FILTER (WHERE msgid IS NOT NULL), '{}') AS msgids"
    " FROM broadcast_tasks WHERE broadcast_id = :id"
)
_COMPLETED = text("SELECT completed_at IS NOT NULL FROM broadcasts WHERE id = :id")


async def _tasks_made(connection: AsyncConnection, broadcast_id: int) -> list[str]:
    """The msgids of the broadcast's WeCom tasks once none is still to be made (bounded)."""
    deadline = time.monotonic() + BROADCAST_SECONDS
    while True:
        row = (await connection.execute(_TASKS, {"id": broadcast_id})).one()
        if not row.pending or time.monotonic() > deadline:
            return list(row.msgids)
        await asyncio.sleep(0.05)


async def _completed(connection: AsyncConnection, broadcast_id: int) -> None:
    """Until the results read after the members sent it have settled the broadcast (bounded)."""
    deadline = time.monotonic() + BROADCAST_SECONDS
    while time.monotonic() < deadline:
        if await connection.scalar(_COMPLETED, {"id": broadcast_id}):
            return
        await asyncio.sleep(0.05)


async def _broadcast(
    hub: Hub, engine: AsyncEngine, http: httpx.AsyncClient, target: Target, state: str
) -> tuple[str, int, str]:
    """A broadcast to the channel's customers: the dry run's sizes, then the real one, its
    tasks confirmed by the members (as in their client), and its funnel once settled."""
    spec = BroadcastSpec.model_validate(
        {
            "app": DEMO_SLUG,
            "audience": {"states": [state]},
            "content": {"text": f"{CHANNEL}新品到店，凭此消息享九折"},
        }
    )
    async with hub.sessionmaker.begin() as session:
        resolved = await broadcasts.dry_run(session, spec)
    shares = ", ".join(f"{m.userid}={m.recipients}" for m in resolved.members)
    dry = f"audience={resolved.audience} ({shares})"
    async with hub.sessionmaker.begin() as session:
        made = await broadcasts.create(session, spec, settings=hub.settings, by=KEY_NAME)
    broadcast_id = made.broadcast.id
    corp = target.crypt.receive_id.decode()
    async with engine.connect() as connection:
        for msgid in await _tasks_made(connection, broadcast_id):
            url = f"{target.sim_url}/sim/corps/{corp}/msg_templates/{msgid}/confirm"
            (await http.post(url)).raise_for_status()
        await _completed(connection, broadcast_id)
    async with hub.sessionmaker() as session:
        detail = await get_broadcast(session, broadcast_id)
    funnel = ", ".join(
        f"{f.name}={getattr(detail.funnel, f.name)}" for f in dataclasses.fields(detail.funnel)
    )
    return dry, broadcast_id, f"status={detail.broadcast.status}, {funnel}"


async def _channel_loop(
    hub: Hub,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    target: Target,
    prepared: Prepared,
    *,
    hub_url: str,
    console: Console,
) -> int:
    """Steps 7 to 9: the channel and its code, customers scanning it and its numbers, a
    broadcast to its customers; the broadcast's id."""
    channel, key = prepared.channel, prepared.key
    _say(
        console,
        f"\n7. channel: id={channel.id}, name={channel.name}, status={channel.status}, "
        f"state={channel.state}, config_id={channel.config_id}, "
        f"members={','.join(channel.userids)}, tag={prepared.tag_name}\n"
        f"   its code: curl -H 'Authorization: Bearer {key}' "
        f"{hub_url}/api/v1/channels/{channel.id}/qr.png -o channel.png",
    )
    assert channel.config_id is not None and channel.state is not None  # an active channel's
    added_to, answers = await _scanned(engine, http, target, channel.config_id)
    _say(
        console,
        f"8. {SCANS} customers scanned it (added to {', '.join(added_to)}) → POST "
        f"{target.hub_url}: answered {' / '.join(sorted(answers))}\n"
        f"   channel numbers: {await _channel_numbers(hub, channel)}",
    )
    dry, broadcast_id, funnel = await _broadcast(hub, engine, http, target, channel.state)
    _say(
        console,
        f"9. broadcast to its customers, dry run: {dry}\n"
        f"   broadcast {broadcast_id}, sent and confirmed by the members: {funnel}",
    )
    return broadcast_id


async def show_the_loop(
    engine: AsyncEngine,
    app: SimApp,
    *,
    hub: str,
    sim: str,
    started: Callable[[], bool],
    hub_app: FastAPI,
    members: Sequence[str],
    command: str,
    console: Console,
) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not started():
        if time.monotonic() > deadline:
            raise TimeoutError(f"wecom-hub or the simulator did not start in {START_SECONDS} s")
        await asyncio.sleep(0.05)
    crypt = WXBizMsgCrypt(token=app.token, encoding_aes_key=app.aes_key, receive_id=app.corp_id)
    target = Target(f"{hub}/callback/{DEMO_SLUG}", crypt, sim)
    hub_state = cast(Hub, hub_app.state.hub)  # set by its lifespan, which has run
    prepared = await _prepare(hub_state, members)
    channel = prepared.channel
    async with httpx.AsyncClient(timeout=10) as http:
        await _first_customer(engine, http, target, console)
        broadcast_id = await _channel_loop(
            hub_state, engine, http, target, prepared, hub_url=hub, console=console
        )
    also = f"{hub}/api/v1/channels, /api/v1/broadcasts/{broadcast_id}"
    _say(
        console,
        f"\nwecom-hub: {hub}  (callback URL of an app: {hub}/callback/<slug>)\n"
        f"simulated WeCom: {sim}  (every API call it got: {sim}/sim/calls)\n"
        f"more: {command} sim send join-group --app {DEMO_SLUG} --hub {hub} --sim {sim}\n"
        f"      {command} sim scan {channel.config_id} --app {DEMO_SLUG} --hub {hub} "
        f"--sim {sim}  (one more customer for {CHANNEL})\n"
        f"API (the demo's key): curl -H 'Authorization: Bearer {prepared.key}' "
        f"{hub}/api/v1/channels/{channel.id}/stats  (also {also})\n"
        f"real WeCom: {command} apps add --slug S --corp-id C --token T --aes-key K --secret X,"
        f" then {command} serve (the demo's app and data stay in its own database)\n"
        "Ctrl-C stops.",
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
        corp = state.corp(app.corp_id)
        corp.limits.distributing_seconds = DISTRIBUTING_SECONDS
        members = list(corp.members)  # the seeded ones: 门店A's
        hub, sim = _address(hub_socket), _address(sim_socket)
        configured = settings.model_copy(update={"wecom_api_base_url": sim})
        hub_app = create_app(configured, database_url=url)
        servers = {
            hub_socket: _server(hub_app),
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
                    hub_app=hub_app,
                    members=members,
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
