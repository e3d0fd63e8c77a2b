"""Welcome messages, auto-tags and quick replies, end to end: callbacks over HTTP into the
service, rules in Postgres, WeCom played by the simulator over HTTP."""

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from defusedxml import ElementTree
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from wechatpy.enterprise.crypto import WeChatCrypto

from app.actions.runner import ActionRunner
from app.actions.wecom import WecomRun
from app.automations.replies import ReplyBook
from app.automations.store import create_rule, rule_spec
from app.automations.welcome import send_welcome
from app.callbacks.safexml import XmlValue
from app.config import Settings
from app.crypto.at_rest import SecretBox, parse_key
from app.db import asyncpg_dsn, create_engine, create_pool, create_sessionmaker
from app.errors import Invalid
from app.processing import workers
from app.processing.processor import EventProcessor
from app.simulator.callbacks import add_external_contact, build_callback, event_xml, text_message
from app.simulator.sender import Scenario
from app.simulator.state import Fault
from app.wecom.client import WecomClient
from app.wecom.factory import open_client
from app.wecom_apps import load_credentials
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, drain, sessionmaker_for, settled, wait_for

_rule_numbers = itertools.count(1)


async def rule(
    settings: Settings, kind: str, match: dict[str, Any], content: dict[str, Any], **fields: Any
) -> int:
    """Save a rule as `rules add` does, under a name of its own: two enabled rules of one
    kind and app may not share one."""
    assert settings.database_url
    spec = rule_spec(
        {"kind": kind, "name": f"{kind} rule {next(_rule_numbers)}", "match": match}
        | {"content": content, **fields}
    )
    engine = create_engine(settings.database_url, settings, pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            created = await create_rule(session, spec, media_dir=settings.media_dir)
            return created.id
    finally:
        await engine.dispose()


def welcomes(simulator: Simulator) -> list[dict[str, Any]]:
    return [
        c.body
        for c in simulator.state.calls
        if c.api == "externalcontact/send_welcome_msg" and c.errcode == 0
    ]


async def new_customer(
    live: httpx.AsyncClient,
    app: RegisteredApp,
    simulator: Simulator,
    state: str,
    name: str = "新客户",
) -> str:
    """A customer scans a channel code: the simulator knows them, the hub gets the callback."""
    async with httpx.AsyncClient(timeout=5) as sim:
        customer = f"wm{time.time_ns()}"
        answer = await sim.post(
            f"{simulator.url}/sim/corps/{app.corp_id}/customers",
            json={"userid": "zhangsan", "external_userid": customer, "state": state, "name": name},
        )
        code = answer.json()["welcome_code"]
    await deliver(
        live,
        app,
        add_external_contact(
            corp_id=app.corp_id,
            user_id="zhangsan",
            external_user_id=customer,
            state=state,
            welcome_code=code,
        ),
    )
    return customer


async def action_of(db: asyncpg.Connection, kind: str, target: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM actions WHERE kind = $1 AND target = $2", kind, target)


async def two_known_tags(
    simulator: Simulator, app: RegisteredApp, db: asyncpg.Connection
) -> tuple[str, str]:
    """Two of the corp's tags, known to the hub as `sync` would have made them known."""
    tags = next(iter(simulator.state.corp(app.corp_id).tag_groups.values()))["tag"]
    for tag in tags[:2]:
        await db.execute(
            "INSERT INTO tags (corp_id, tag_id, name) VALUES ($1, $2, 't')", app.corp_id, tag["id"]
        )
    return tags[0]["id"], tags[1]["id"]


async def test_channel_welcome_with_attachments_and_the_default_for_other_channels(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await rule(settings, "welcome", {}, {"text": "你好 {customer_name}，我是{member_name}"})
    await rule(
        settings,
        "welcome",
        {"state": "spring", "state_mode": "prefix"},
        {
            "text": "春季活动欢迎 {customer_name}",
            "attachments": [
                {"msgtype": "link", "title": "春季活动", "url": "https://example.com/spring"},
                {"msgtype": "image", "pic_url": "https://example.com/p.png"},
            ],
        },
    )

    welcomes_timed = REGISTRY.get_sample_value("wecom_hub_welcome_seconds_count") or 0
    spring = await new_customer(live, wecom_app, simulator, "spring_promo", name="王小明")
    other = await new_customer(live, wecom_app, simulator, "poster_7", name="李雷")
    await settled(db, "welcome", spring)
    await settled(db, "welcome", other)

    sent = {w["welcome_code"]: w for w in welcomes(simulator)}
    assert len(sent) == 2
    by_text = {w["text"]["content"]: w for w in sent.values()}
    assert set(by_text) == {"春季活动欢迎 王小明", "你好 李雷，我是我们"}
    assert [a["msgtype"] for a in by_text["春季活动欢迎 王小明"]["attachments"]] == [
        "link",
        "image",
    ]
    assert "attachments" not in by_text["你好 李雷，我是我们"]
    assert REGISTRY.get_sample_value("wecom_hub_welcome_seconds_count") == welcomes_timed + 2
    done = await action_of(db, "welcome", spring)
    assert done is not None and done["status"] == "succeeded"
    assert "rule_name" in done["payload"]


async def test_welcome_less_channel_is_skipped_with_the_reason(
    live: httpx.AsyncClient,
    settings: Settings,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await rule(settings, "welcome", {}, {"text": "你好"})
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id="wmNOCODE"
        ),
    )
    await settled(db, "welcome", "wmNOCODE")
    skipped = await action_of(db, "welcome", "wmNOCODE")
    assert skipped is not None and skipped["status"] == "skipped"
    assert "no WelcomeCode" in skipped["reason"]


async def test_an_expired_welcome_code_ends_expired_and_is_never_sent(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await rule(settings, "welcome", {}, {"text": "你好"})
    code = simulator.state.issue_welcome_code(wecom_app.corp_id)
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id="zhangsan",
            external_user_id="wmLATE",
            welcome_code=code,
            create_time=int(time.time()) - 30,
        ),
    )  # the window closed 10 s ago
    await settled(db, "welcome", "wmLATE")
    late = await action_of(db, "welcome", "wmLATE")
    assert late is not None and late["status"] == "expired" and late["attempts"] == 1
    assert "deadline" in late["reason"]
    assert welcomes(simulator) == []


async def test_41096_until_the_deadline_ends_expired_like_any_other_deadline(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """Another app delivering until the code dies: the deadline ended it (expired), as
    repeated -1 answers would have; not a failure of ours."""
    await rule(settings, "welcome", {}, {"text": "你好"})
    simulator.state.faults = [Fault(api="externalcontact/send_welcome_msg", errcode=41096)]
    code = simulator.state.issue_welcome_code(wecom_app.corp_id)
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id="zhangsan",
            external_user_id="wmBUSY",
            welcome_code=code,
            create_time=int(time.time()) - 18,
        ),
    )  # about 2 s of the window left
    await settled(db, "welcome", "wmBUSY")
    busy = await action_of(db, "welcome", "wmBUSY")
    assert busy is not None and busy["status"] == "expired", busy
    assert "41096" in busy["reason"]


async def test_already_delivered_welcome_is_skipped_41051(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await rule(settings, "welcome", {}, {"text": "你好"})
    code = simulator.state.issue_welcome_code(wecom_app.corp_id)
    simulator.state.corp(wecom_app.corp_id).welcome_codes[code][1] = True  # another app won
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id="zhangsan",
            external_user_id="wmTAKEN",
            welcome_code=code,
        ),
    )
    await settled(db, "welcome", "wmTAKEN")
    taken = await action_of(db, "welcome", "wmTAKEN")
    assert taken is not None and taken["status"] == "skipped" and "41051" in taken["reason"]


@dataclass
class Replica:
    """Another replica's action runner, with what it runs on."""

    runner: ActionRunner
    sessions: async_sessionmaker[AsyncSession]
    pool: asyncpg.Pool
    client: WecomClient
    box: SecretBox


@contextlib.asynccontextmanager
async def replica(
    settings: Settings, simulator: Simulator, **updates: Any
) -> AsyncIterator[Replica]:
    configured = settings.model_copy(update={"wecom_api_base_url": simulator.url, **updates})
    assert configured.database_url and configured.secret_key
    engine = create_engine(configured.database_url, configured, pool_size=4)
    box = SecretBox(parse_key(configured.secret_key.get_secret_value()))
    maker = create_sessionmaker(engine)
    pool = create_pool(asyncpg_dsn(configured.database_url), configured, max_size=4)
    try:
        async with pool, open_client(configured, maker, box) as client:
            runner = workers.action_runner(configured, pool, maker, None, box, client)
            yield Replica(runner, maker, pool, client, box)
    finally:
        await engine.dispose()


async def test_duplicates_and_two_runners_still_send_one_welcome(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await rule(settings, "welcome", {}, {"text": "你好"})
    async with replica(settings, simulator) as second_replica:  # beside the live one
        runner = second_replica.runner
        stop = asyncio.Event()

        async def run_until_stopped() -> None:  # stops between claims, never mid-query
            while not stop.is_set():
                await runner.run_once()
                await asyncio.sleep(0.01)

        second = asyncio.create_task(run_until_stopped())
        try:
            code = simulator.state.issue_welcome_code(wecom_app.corp_id)
            message = add_external_contact(
                corp_id=wecom_app.corp_id,
                user_id="zhangsan",
                external_user_id="wmDUP",
                welcome_code=code,
            )
            for _ in range(3):  # WeCom retrying, each time encrypted afresh
                await deliver(live, wecom_app, message)
            await settled(db, "welcome", "wmDUP")
        finally:
            stop.set()
            await second
    assert [w["welcome_code"] for w in welcomes(simulator)] == [code]
    assert await db.fetchval("SELECT count(*) FROM actions WHERE kind = 'welcome'") == 1


async def test_tags_by_channel_and_by_group_join(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    channel_tag, group_tag = await two_known_tags(simulator, wecom_app, db)
    await rule(
        settings,
        "tag",
        {"on": "channel", "state": "store_"} | {"state_mode": "prefix"},
        {"add_tags": [channel_tag]},
    )
    await rule(settings, "tag", {"on": "group_join"}, {"add_tags": [group_tag]})

    customer = await new_customer(live, wecom_app, simulator, "store_shanghai")
    await settled(db, "mark_tag", customer)
    await deliver(
        live,
        wecom_app,
        event_xml(
            wecom_app.corp_id,
            "change_external_chat",
            {
                "ChatId": "wrGROUP",
                "ChangeType": "update",
                "UpdateDetail": "add_member",
                "JoinScene": "3",
                "MemChangeCnt": "2",
                "MemChangeList": [customer, "zhangsan"],
            },
        ),
    )

    async def both_tagged() -> bool:
        tag_ids = await db.fetchval(
            "SELECT tag_ids FROM follows WHERE external_userid = $1", customer
        )
        return set(tag_ids or []) == {channel_tag, group_tag}

    await wait_for(both_tagged)
    calls = [
        c.body
        for c in simulator.state.calls
        if c.api == "externalcontact/mark_tag" and c.errcode == 0
    ]
    assert [c["add_tag"] for c in calls] == [[channel_tag], [group_tag]]
    assert {c["userid"] for c in calls} == {"zhangsan"}


async def test_passive_reply_decrypts_with_wechatpy_to_the_configured_answer(
    client: httpx.AsyncClient,
    settings: Settings,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await rule(settings, "reply", {"keywords": ["菜单", "menu"]}, {"text": "1. 下单 2. 查询"})
    await rule(
        settings,
        "reply",
        {"keywords": [r"^订单\d+$"], "mode": "regex"},
        {"text": "订单查询中"},
        priority=5,
    )
    theirs = WeChatCrypto(wecom_app.token, wecom_app.aes_key, wecom_app.corp_id)

    async def ask(content: str) -> httpx.Response:
        callback = build_callback(
            wecom_app.crypt,
            text_message(
                corp_id=wecom_app.corp_id,
                from_user="lisi",
                content=content,
                msg_id=str(time.time_ns()),
            ),
        )
        return await client.post(
            f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
        )

    for question, answer in (("菜单", "1. 下单 2. 查询"), ("订单123", "订单查询中")):
        response = await ask(question)
        envelope = ElementTree.fromstring(response.content)
        plain = theirs.decrypt_message(
            response.text,
            envelope.findtext("MsgSignature"),
            envelope.findtext("TimeStamp"),
            envelope.findtext("Nonce"),
        )
        reply = ElementTree.fromstring(plain)
        assert (reply.findtext("Content"), reply.findtext("ToUserName")) == (answer, "lisi")
        assert reply.findtext("FromUserName") == wecom_app.corp_id
    assert (await ask("随便聊聊")).text == "success"
    assert await db.fetchval("SELECT count(*) FROM events") == 3


async def test_regex_replies_are_matched_off_the_event_loop(
    client: httpx.AsyncClient, settings: Settings, wecom_app: RegisteredApp
) -> None:
    """Forty patterns that each run out of time (50 ms) on this message: two seconds of
    matching. On the event loop it would stall every other request for that long; in a
    thread, /healthz keeps answering while the callback waits for its verdict."""
    slow = [f"(a|aa)+b{{0,{i}}}$" for i in range(40)]
    await rule(settings, "reply", {"keywords": slow, "mode": "regex"}, {"text": "never"})
    callback = build_callback(
        wecom_app.crypt,
        text_message(
            corp_id=wecom_app.corp_id, from_user="lisi", content="a" * 40 + "!", msg_id="m1"
        ),
    )
    answered = asyncio.create_task(
        client.post(f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body)
    )
    gaps: list[float] = []
    last = time.monotonic()
    while not answered.done():
        assert (await client.get("/healthz")).status_code == 200
        await asyncio.sleep(0.01)  # a request that never waits would never let the loop on
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert (await answered).text == "success"  # no pattern matched in time: no reply
    assert len(gaps) > 10 and max(gaps) < 1.0


async def test_a_flood_of_regex_matches_skips_the_reply_instead_of_queueing(
    settings: Settings,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With one match allowed to wait, a second message that comes meanwhile gets no
    passive reply at once (and a warning) rather than an answer after WeCom gave up."""
    slow = [f"(a|aa)+b{{0,{i}}}$" for i in range(10)]  # about half a second of matching
    await rule(settings, "reply", {"keywords": slow, "mode": "regex"}, {"text": "never"})
    app_id = await db.fetchval("SELECT id FROM apps WHERE slug = $1", wecom_app.slug)
    maker = sessionmaker_for(settings)
    book = ReplyBook(maker, ttl=60, max_waiting=1)
    fields: dict[str, XmlValue] = {
        "MsgType": "text",
        "Content": "a" * 40 + "!",
        "FromUserName": "lisi",
    }

    def ask() -> Coroutine[Any, Any, str | None]:
        return book.passive_reply(
            app_id=app_id, crypt=wecom_app.crypt, fields=fields, timestamp="1", nonce="n"
        )

    try:
        await book.rules(app_id)  # loaded: both messages go straight to matching
        with caplog.at_level(logging.WARNING, logger="app.automations.replies"):
            first = asyncio.create_task(ask())
            await asyncio.sleep(0)  # the first is now matching on the matcher's thread
            assert await ask() is None
            skipped = [r for r in caplog.records if "passive reply skipped" in r.getMessage()]
            assert len(skipped) == 1 and not first.done()
            assert await first is None  # no pattern matched in time
    finally:
        book.close()
        await maker.kw["bind"].dispose()


@pytest.mark.parametrize(
    ("kind", "match", "content", "problem"),
    [
        ("welcome", {}, {"text": "hi {nickname}"}, "unknown placeholder {nickname}"),
        ("welcome", {"state": "(", "state_mode": "regex"}, {"text": "hi"}, "bad regular"),
        (
            "welcome",
            {},
            {"attachments": [{"msgtype": "link", "title": "长" * 50, "url": "u"}]},
            "link title is 150 bytes",
        ),
        (
            "welcome",
            {},
            {"text": "x", "attachments": [{"msgtype": "video", "media_id": "m"}] * 10},
            "at most 9",
        ),
        ("tag", {"on": "channel", "state": "s"}, {"add_tags": ["etNOSUCHTAG"]}, "unknown tag id"),
        ("reply", {"keywords": []}, {"text": "x"}, "at least 1"),
        ("tag", {"on": "keyword"}, {"add_tags": ["t"]}, "a keyword tag rule needs keywords"),
        (
            "tag",
            {"on": "keyword", "keywords": ["[a"], "mode": "regex"},
            {"add_tags": ["t"]},
            "bad regular",
        ),
        ("nonsense", {}, {}, "kind: Input should be 'welcome', 'tag', 'reply' or 'churn'"),
    ],
)
async def test_rules_are_validated_when_saved(
    settings: Settings,
    db: asyncpg.Connection,
    kind: str,
    match: dict[str, Any],
    content: dict[str, Any],
    problem: str,
) -> None:
    with pytest.raises(Invalid) as raised:
        await rule(settings, kind, match, content)
    assert problem in str(raised.value)
    assert await db.fetchval("SELECT count(*) FROM rules") == 0


def test_sender_scenarios_build_valid_callbacks() -> None:
    """Every `wecom-hub sim send` scenario yields XML the hub parses."""
    from app.callbacks import safexml
    from app.simulator.sender import SCENARIOS

    for name, build in SCENARIOS.items():
        fields = safexml.parse(build("wwcorp", Scenario(state="s"), "CODE"))
        assert fields["ToUserName"] == "wwcorp", name


async def test_a_runner_killed_mid_welcome_is_taken_over_and_nothing_is_sent_twice(
    client: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """Two runners "die" holding a welcome each: one before its call, one after the call
    reached WeCom but before it recorded that. When their leases end, a live runner sends
    the first welcome, and for the second WeCom's single-use code answers 41051: each
    customer is welcomed exactly once, and each action says what happened."""
    simulator.state.corp(wecom_app.corp_id).secrets.add(wecom_app.secret)
    simulator.state.seed(wecom_app.corp_id, members=1, customers_per_member=0, groups=0, tags=0)
    await rule(settings, "welcome", {}, {"text": "你好"})
    for customer in ("wmNEVERSENT", "wmSENTUNRECORDED"):
        code = simulator.state.issue_welcome_code(wecom_app.corp_id)
        await deliver(client, wecom_app, add_external_contact(
            corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id=customer,
            welcome_code=code))  # fmt: skip
    processor_maker = sessionmaker_for(settings)
    await drain(EventProcessor(processor_maker))
    await processor_maker.kw["bind"].dispose()

    async with (
        replica(settings, simulator, processor_lease_seconds=1.0) as died,
        replica(settings, simulator, processor_lease_seconds=1.0) as survivor,
    ):
        dead, live = died.runner, survivor.runner
        claimed = {a.target: a for a in await dead.claim(limit=10) if a.kind == "welcome"}
        assert set(claimed) == {"wmNEVERSENT", "wmSENTUNRECORDED"}
        half_done = claimed["wmSENTUNRECORDED"]
        assert half_done.app_id is not None
        async with died.sessions() as session:
            credentials = await load_credentials(session, died.box, half_done.app_id)
        await send_welcome(
            WecomRun(
                half_done, died.sessions, died.pool, half_done.app_id, credentials.corp_id,
                credentials, died.client,
            )
        )  # fmt: skip
        assert await live.run_once() == 0  # the leases still hold

        async def both_ended() -> bool:
            await live.run_once()
            ended = (
                "SELECT count(*) FROM actions WHERE kind = 'welcome' AND finished_at IS NOT NULL"
            )
            return int(await db.fetchval(ended)) == 2

        await wait_for(both_ended)

    delivered = [w["welcome_code"] for w in welcomes(simulator)]
    assert len(delivered) == len(set(delivered)) == 2
    never_sent = await action_of(db, "welcome", "wmNEVERSENT")
    assert never_sent is not None and never_sent["status"] == "succeeded"
    assert never_sent["attempts"] == 2
    unrecorded = await action_of(db, "welcome", "wmSENTUNRECORDED")
    assert unrecorded is not None and unrecorded["status"] == "skipped"
    assert unrecorded["reason"].startswith("41051")
