"""微信客服 end to end: a kf_msg_or_event callback makes wecom-hub pull with kf/sync_msg from
its stored cursor, answer matching messages with kf/send_msg, and welcome with
kf/send_msg_on_event; the cursor survives a restart."""

from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.simulator.callbacks import event_xml
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, settled, wait_for
from tests.test_automations import action_of, new_customer, rule, two_known_tags

KF = "wkSHOPSERVICE"


async def customer_writes(
    simulator: Simulator,
    app: RegisteredApp,
    content: str,
    customer: str = "wmKFCUSTOMER",
    seconds_ago: int = 0,
) -> str:
    async with httpx.AsyncClient(base_url=simulator.url) as sim:
        answer = await sim.post(
            f"/sim/corps/{app.corp_id}/kf/{KF}/messages",
            json={"external_userid": customer, "content": content, "seconds_ago": seconds_ago},
        )
        return str(answer.json()["token"])


def kf_callback(app: RegisteredApp, token: str) -> str:
    return event_xml(app.corp_id, "kf_msg_or_event", {"Token": token, "OpenKfId": KF})


def sent(simulator: Simulator, api: str) -> list[dict[str, Any]]:
    return [c.body for c in simulator.state.calls if c.api == api and c.errcode == 0]


async def test_kf_messages_are_answered_once_and_the_cursor_survives_a_restart(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await rule(settings, "reply", {"keywords": ["菜单"]}, {"text": "1. 下单 2. 查询"})
    token = await customer_writes(simulator, wecom_app, "菜单")
    await customer_writes(simulator, wecom_app, "随便聊聊")
    await deliver(live, wecom_app, kf_callback(wecom_app, token))
    await deliver(live, wecom_app, kf_callback(wecom_app, token + "x"))  # a burst: 2 callbacks

    async def answered() -> bool:
        return len(sent(simulator, "kf/send_msg")) == 1

    async def both_pulls_ended() -> bool:  # the burst's second pull finds nothing new
        done = "SELECT count(*) FROM actions WHERE kind = 'kf_sync' AND finished_at IS NOT NULL"
        return int(await db.fetchval(done)) == 2

    await wait_for(answered)
    await wait_for(both_pulls_ended)
    [reply] = sent(simulator, "kf/send_msg")
    assert (reply["touser"], reply["open_kfid"], reply["text"]["content"]) == (
        "wmKFCUSTOMER",
        KF,
        "1. 下单 2. 查询",
    )
    assert await db.fetchval("SELECT count(*) FROM messages WHERE source = 'kf'") == 2
    cursor = await db.fetchval("SELECT cursor FROM kf_cursors WHERE open_kfid = $1", KF)
    assert cursor == "c2"

    # Another instance (a restart, or a second replica) has only the cursor in Postgres,
    # and reads only what is new.
    assert settings.database_url
    configured = settings.model_copy(
        update={
            "process_in_serve": True,
            "wecom_api_base_url": simulator.url,
            "processor_poll_seconds": 0.2,
        }
    )
    restarted: FastAPI = create_app(configured, database_url=configured.database_url)
    async with (
        restarted.router.lifespan_context(restarted),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=restarted), base_url="http://hub2"
        ) as client,
    ):
        token = await customer_writes(simulator, wecom_app, "菜单")
        await deliver(client, wecom_app, kf_callback(wecom_app, token))

        async def answered_twice() -> bool:
            return len(sent(simulator, "kf/send_msg")) == 2

        await wait_for(answered_twice)
    cursors = [c["cursor"] for c in sent(simulator, "kf/sync_msg")]
    assert cursors[0] == "" and cursors[-1] == "c2"  # never from the start again
    assert await db.fetchval("SELECT count(*) FROM messages WHERE source = 'kf'") == 3
    assert len({r["msgid"] for r in sent(simulator, "kf/send_msg")}) == 2


async def test_kf_welcome_on_enter_session(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await rule(settings, "welcome", {"open_kfid": KF}, {"text": "您好，请问有什么可以帮您？"})
    await rule(settings, "welcome", {}, {"text": "customer welcome, not for KF"})
    async with httpx.AsyncClient(base_url=simulator.url) as sim:
        entered = (
            await sim.post(
                f"/sim/corps/{wecom_app.corp_id}/kf/{KF}/enter_session",
                json={"external_userid": "wmKFNEW"},
            )
        ).json()
    await deliver(live, wecom_app, kf_callback(wecom_app, entered["token"]))

    async def welcomed() -> bool:
        status = await db.fetchval("SELECT status FROM actions WHERE kind = 'kf_welcome'")
        return bool(status == "succeeded")

    await wait_for(welcomed)
    [welcome] = sent(simulator, "kf/send_msg_on_event")
    assert welcome["code"] == entered["welcome_code"]
    assert welcome["text"]["content"] == "您好，请问有什么可以帮您？"


async def test_keyword_tags_from_what_customers_write_to_kf(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    price_tag, vip_tag = await two_known_tags(simulator, wecom_app, db)
    keyword = {"on": "keyword", "mode": "contains"}
    await rule(
        settings, "tag", keyword | {"keywords": ["价格", "多少钱"]}, {"add_tags": [price_tag]}
    )
    await rule(
        settings, "tag", keyword | {"keywords": ["会员"], "open_kfid": KF}, {"add_tags": [vip_tag]}
    )
    await rule(  # another account's rule: must not fire here
        settings,
        "tag",
        keyword | {"keywords": ["价格"], "open_kfid": "wkOTHER"},
        {"remove_tags": [price_tag]},
    )
    friend = await new_customer(live, wecom_app, simulator, "kf_channel")
    await settled(db, "welcome", friend)  # skipped: no welcome rule; the follow is stored
    token = await customer_writes(simulator, wecom_app, "会员价格是多少？", customer=friend)
    await customer_writes(simulator, wecom_app, "价格", customer="wmSTRANGER")  # no friend
    await customer_writes(simulator, wecom_app, "你好", customer=friend)  # no keyword
    await deliver(live, wecom_app, kf_callback(wecom_app, token))

    await settled(db, "mark_tag", friend)
    await settled(db, "mark_tag", "wmSTRANGER")
    [marked] = [
        c.body
        for c in simulator.state.calls
        if c.api == "externalcontact/mark_tag" and c.errcode == 0
    ]  # both rules of this account in one call; none for the stranger or for "你好"
    assert (marked["userid"], marked["external_userid"]) == ("zhangsan", friend)
    assert sorted(marked["add_tag"]) == sorted([price_tag, vip_tag])
    assert marked["remove_tag"] == []
    stranger = await action_of(db, "mark_tag", "wmSTRANGER")
    assert stranger is not None and stranger["status"] == "skipped"
    assert stranger["reason"] == "the customer is not a friend of any member"
    tag_ids = await db.fetchval("SELECT tag_ids FROM follows WHERE external_userid = $1", friend)
    assert sorted(tag_ids) == sorted([price_tag, vip_tag])


async def test_replies_stay_inside_kf_send_limits(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """WeCom accepts at most 5 messages per customer message, within 48 h of it: a reply
    that would break either is `skipped` saying which, and never sent."""
    await rule(settings, "reply", {"keywords": ["菜单"]}, {"text": "1. 下单 2. 查询"})
    token = await customer_writes(simulator, wecom_app, "菜单", customer="wmEAGER")
    for _ in range(6):  # seven in a row, read at once: seven replies after the last one
        await customer_writes(simulator, wecom_app, "菜单", customer="wmEAGER")
    two_days = 49 * 3600
    await customer_writes(simulator, wecom_app, "菜单", customer="wmLATE", seconds_ago=two_days)
    await deliver(live, wecom_app, kf_callback(wecom_app, token))

    async def all_ended() -> bool:
        pending = "SELECT count(*) FROM actions WHERE kind = 'kf_reply' AND finished_at IS NULL"
        total = "SELECT count(*) FROM actions WHERE kind = 'kf_reply'"
        return int(await db.fetchval(total)) == 8 and int(await db.fetchval(pending)) == 0

    await wait_for(all_ended)
    outcomes = await db.fetch(
        "SELECT target, status, reason FROM actions WHERE kind = 'kf_reply' ORDER BY id"
    )
    eager = [(r["status"], r["reason"]) for r in outcomes if r["target"] == "wmEAGER"]
    assert [status for status, _ in eager].count("succeeded") == 5
    assert [reason for status, reason in eager if status == "skipped"] == [
        "5 messages already sent since the customer's last message"
    ] * 2
    [late] = [(r["status"], r["reason"]) for r in outcomes if r["target"] == "wmLATE"]
    assert late == ("skipped", "more than 48 h since the customer's last message")
    sends = [c["touser"] for c in sent(simulator, "kf/send_msg")]
    assert sends == ["wmEAGER"] * 5

    # The customer writes again: the window opens anew.
    token = await customer_writes(simulator, wecom_app, "菜单", customer="wmEAGER")
    await deliver(live, wecom_app, kf_callback(wecom_app, token))

    async def answered_again() -> bool:
        return len(sent(simulator, "kf/send_msg")) == 6

    await wait_for(answered_again)
