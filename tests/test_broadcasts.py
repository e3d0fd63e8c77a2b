"""Broadcasts (群发): the audience resolved from wecom-hub's own state and split per member;
the API's checks and dry run; and end to end through the action runner against the
simulator over HTTP: one WeCom task per member however the calls fail, the funnel as the
simulator recorded it, remind and cancel as WeCom answers them, broadcast.completed."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.apikeys import Scope
from app.broadcasts import audience
from app.broadcasts.spec import AudienceSpec
from app.config import Settings
from app.simulator.state import Fault
from tests.api_helpers import auth, hub_state, key_header, problem
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import sim, wait_for
from tests.test_webhooks import Receiver, receiver, subscribe, until

__all__ = ["receiver"]  # a fixture, used by name

URL = "/api/v1/broadcasts"
T1, T2, T3 = "etT1", "etT2", "etT3"
DAY = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Results read a fifth of a second after a broadcast is made, then every half second."""
    return settings.model_copy(
        update={"broadcast_poll_seconds": 0.2, "broadcast_poll_max_seconds": 0.5}
    )


async def befriend(
    db: asyncpg.Connection,
    app: RegisteredApp,
    userid: str,
    external: str,
    *,
    tags: list[str] | None = None,
    state: str = "",
    added: datetime = DAY,
    status: str = "active",
    simulator: Simulator | None = None,
) -> None:
    """A follow as wecom-hub's projection keeps it (and, given the simulator, as WeCom knows
    it: a friend there too)."""
    await db.execute(
        "INSERT INTO external_contacts (corp_id, external_userid) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING",
        app.corp_id,
        external,
    )
    await db.execute(
        "INSERT INTO follows (corp_id, userid, external_userid, status, added_at, state, tag_ids)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        app.corp_id,
        userid,
        external,
        status,
        added,
        state,
        tags or [],
    )
    if simulator is not None and status == "active":
        simulator.state.add_customer(
            app.corp_id, userid=userid, external_userid=external, name=external, state=state
        )
        follow = simulator.state.corp(app.corp_id).contacts[external].follows[userid]
        follow["createtime"] = int(added.timestamp())


async def known_tags(db: asyncpg.Connection, app: RegisteredApp, *tags: str) -> None:
    for tag in tags:
        await db.execute(
            "INSERT INTO tags (corp_id, tag_id, name) VALUES ($1, $2, $3)", app.corp_id, tag, tag
        )


async def group(db: asyncpg.Connection, app: RegisteredApp, chat_id: str, owner: str) -> None:
    await db.execute(
        "INSERT INTO customer_groups (corp_id, chat_id, owner) VALUES ($1, $2, $3)",
        app.corp_id,
        chat_id,
        owner,
    )


@pytest.fixture
async def follows(db: asyncpg.Connection, wecom_app: RegisteredApp) -> RegisteredApp:
    """zhangsan: a (T1, store_a), b (T2, store_b); lisi: c (T1, added later than its
    follow of zhangsan, so c is lisi's), d (T1 but churned); wangwu: e (store_a, 2025)."""
    app = wecom_app
    await known_tags(db, app, T1, T2, T3)
    await befriend(db, app, "zhangsan", "wmA", tags=[T1], state="store_a")
    await befriend(db, app, "zhangsan", "wmB", tags=[T2], state="store_b")
    await befriend(db, app, "zhangsan", "wmC", tags=[T1])
    await befriend(db, app, "lisi", "wmC", tags=[T1], added=DAY + timedelta(days=3))
    await befriend(db, app, "lisi", "wmD", tags=[T1], status="deleted_by_customer")
    await befriend(db, app, "wangwu", "wmE", state="store_a", added=DAY - timedelta(days=300))
    await group(db, app, "wrG1", "zhangsan")
    await group(db, app, "wrG2", "lisi")
    return app


async def shares(hub: FastAPI, corp_id: str, **spec: Any) -> dict[str, int]:
    async with hub_state(hub).sessionmaker() as session:
        resolved = await audience.resolve(session, corp_id, AudienceSpec(**spec))
    assert resolved.audience == sum(m.recipients for m in resolved.members)
    return {m.userid: m.recipients for m in resolved.members}


async def test_the_audience_is_wecom_hubs_own_state_each_customer_once(
    hub: FastAPI, follows: RegisteredApp
) -> None:
    corp = follows.corp_id
    # Any of the tags; churned d left out; c once, to lisi, whom c added most recently.
    assert await shares(hub, corp, tags=[T1]) == {"zhangsan": 1, "lisi": 1}
    assert await shares(hub, corp, tags=[T1, T2]) == {"zhangsan": 2, "lisi": 1}
    assert await shares(hub, corp, states=["store_a"]) == {"zhangsan": 1, "wangwu": 1}
    # Every criterion holds for the same follow: zhangsan's follow of c is tagged too.
    assert await shares(hub, corp, tags=[T1], userids=["zhangsan"]) == {"zhangsan": 2}
    assert await shares(hub, corp, userids=["wangwu", "nobody"]) == {"wangwu": 1}
    since = DAY - timedelta(days=1)
    assert await shares(hub, corp, added_since=since) == {"zhangsan": 2, "lisi": 1}
    assert await shares(hub, corp, added_until=since) == {"wangwu": 1}
    assert await shares(hub, corp, tags=[T3]) == {}
    assert await shares(hub, corp, owners=["lisi"]) == {"lisi": 1}
    assert await shares(hub, corp, chat_ids=["wrG1", "wrG2"]) == {"zhangsan": 1, "lisi": 1}
    async with hub_state(hub).sessionmaker() as session:
        listed = await audience.resolve(
            session, corp, AudienceSpec(external_userids=["wmD", "wmA", "wmNOBODY"])
        )
        chunked = await session.execute(
            audience.recipients(corp, AudienceSpec(tags=[T1, T2]), per_task=1)
        )
    assert {m.userid: m.recipients for m in listed.members} == {"zhangsan": 1}
    assert (listed.unmatched, listed.unmatched_ids) == (2, ("wmD", "wmNOBODY"))
    # Past WeCom's per-call limit a member's share becomes several tasks.
    assert sorted((row.recipient, row.userid, row.chunk) for row in chunked) == [
        ("wmA", "zhangsan", 0),
        ("wmB", "zhangsan", 1),
        ("wmC", "lisi", 0),
    ]


async def test_dry_run_counts_per_member_and_stores_nothing(
    client: httpx.AsyncClient, hub: FastAPI, follows: RegisteredApp, db: asyncpg.Connection
) -> None:
    headers = await auth(hub, Scope.WRITE)
    request = {
        "app": follows.slug,
        "audience": {"tags": [T1, T2]},
        "content": {"text": "双十一"},
        "dry_run": True,
    }
    answer = await client.post(URL, json=request, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "dry_run": True,
        "audience": 3,
        "members": [
            {"userid": "lisi", "recipients": 1, "tasks": 1},
            {"userid": "zhangsan", "recipients": 2, "tasks": 1},
        ],
        "unmatched": 0,
        "unmatched_ids": [],
    }
    for table in ("broadcasts", "broadcast_recipients", "broadcast_tasks", "actions"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table  # noqa: S608


async def test_a_channel_stands_for_its_state_and_an_unknown_one_is_named(
    client: httpx.AsyncClient, hub: FastAPI, follows: RegisteredApp, db: asyncpg.Connection
) -> None:
    app_id = await db.fetchval("SELECT id FROM apps WHERE slug = $1", follows.slug)
    store_a = await db.fetchval(
        "INSERT INTO channels (app_id, corp_id, kind, name, state, status)"
        " VALUES ($1, $2, 'contact_way', '门店A', 'store_a', 'active') RETURNING id",
        app_id,
        follows.corp_id,
    )
    headers = await auth(hub, Scope.WRITE)
    request: dict[str, Any] = {
        "app": follows.slug,
        "audience": {"channels": [store_a]},
        "content": {"text": "会员日"},
        "dry_run": True,
    }
    answer = await client.post(URL, json=request, headers=headers)
    assert answer.status_code == 200, answer.text
    shares = {m["userid"]: m["recipients"] for m in answer.json()["members"]}
    assert shares == {"zhangsan": 1, "wangwu": 1}  # as states=["store_a"]
    request["audience"] = {"channels": [store_a, store_a + 1000]}
    refused = await client.post(URL, json=request, headers=headers)
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["audience.channels"]
    assert str(store_a + 1000) in refused.json()["errors"][0]["message"]


async def test_a_broadcast_is_checked_before_anything_is_stored(
    client: httpx.AsyncClient, hub: FastAPI, follows: RegisteredApp, db: asyncpg.Connection
) -> None:
    headers = await auth(hub, Scope.WRITE)
    good = {"app": follows.slug, "audience": {"tags": [T1]}, "content": {"text": "hi"}}

    async def refused(change: dict[str, Any], status: int, code: str) -> list[str]:
        body = problem(
            await client.post(URL, json={**good, **change}, headers=headers), status, code
        )
        return [e["field"] for e in body.get("errors", [])]

    assert await refused({"audience": {"tags": [T3]}}, 422, "broadcast_empty_audience") == [
        "audience"
    ]
    assert await refused({"audience": {"tags": ["etNOPE"]}}, 422, "validation_failed") == [
        "audience.tags"
    ]
    assert await refused({"audience": {}}, 422, "validation_failed") == ["audience"]
    assert await refused(
        {"audience": {"tags": [T1], "owners": ["lisi"]}}, 422, "validation_failed"
    ) == ["audience"]
    assert await refused({"app": "nope"}, 422, "validation_failed") == ["app"]
    assert await refused({"content": {"text": "字" * 1334}}, 422, "validation_failed") == [
        "content.text"
    ]
    link = {"msgtype": "link", "title": "t", "url": "https://example.com"}
    assert await refused(
        {"content": {"text": "x", "attachments": [link] * 10}}, 422, "validation_failed"
    ) == ["content.attachments"]
    assert await refused(
        {"content": {"attachments": [{"msgtype": "image", "sha256": "0" * 64}]}},
        422,
        "validation_failed",
    ) == ["content.attachments.0.sha256"]
    problem(
        await client.post(URL, json=good, headers=await auth(hub, Scope.READ)),
        403,
        "insufficient_scope",
    )
    assert await db.fetchval("SELECT count(*) FROM broadcasts") == 0

    retried = {**headers, "Idempotency-Key": "bc-1"}
    good = {**good, "content": {"text": "字" * 1333}}
    made = await client.post(URL, json=good, headers=retried)
    assert made.status_code == 201, made.text
    again = await client.post(URL, json=good, headers=retried)  # a client's retry
    assert again.headers["Idempotent-Replayed"] == "true"
    body = made.json()
    assert again.json()["id"] == body["id"]
    assert await db.fetchval("SELECT count(*) FROM broadcasts") == 1
    assert (body["status"], body["chat_type"], body["audience_size"]) == ("sending", "single", 2)
    assert body["funnel"] == {
        "audience": 2,
        "tasks": 0,
        "confirmed": 0,
        "sent": 0,
        "not_friend": 0,
        "over_limit": 0,
        "failed": 0,
        "pending": 2,
    }
    keys = await db.fetch("SELECT kind, idempotency_key FROM actions ORDER BY id")
    assert [tuple(k) for k in keys] == [
        ("broadcast_task", f"broadcast:{body['id']}:lisi:0"),
        ("broadcast_task", f"broadcast:{body['id']}:zhangsan:0"),
        ("broadcast_results", f"broadcast_results:{body['id']}:0"),
    ]
    problem(await client.get(f"{URL}/999", headers=headers), 404, "broadcast_not_found")
    listed = (await client.get(URL, headers=headers, params={"app": follows.slug})).json()
    assert [b["id"] for b in listed["data"]] == [body["id"]]


async def test_an_explicit_list_past_postgres_parameter_limit_is_one_array(
    client: httpx.AsyncClient, hub: FastAPI, follows: RegisteredApp, db: asyncpg.Connection
) -> None:
    """40 000 external_userids (the API takes up to 100 000): bound one by one, as `IN (…)`
    does, they pass asyncpg's 32 767 parameters and the request is a 500."""
    headers = await auth(hub, Scope.WRITE)
    listed = [f"wmNOBODY{i:05d}" for i in range(40_000)] + ["wmB", "wmC"]
    request = {
        "app": follows.slug,
        "audience": {"external_userids": listed},
        "content": {"text": "hi"},
        "dry_run": True,
    }
    dry = await client.post(URL, json=request, headers=headers)
    assert dry.status_code == 200, dry.text
    assert (dry.json()["audience"], dry.json()["unmatched"]) == (2, 40_000)
    assert dry.json()["unmatched_ids"][:2] == ["wmNOBODY00000", "wmNOBODY00001"]
    made = await client.post(URL, json={**request, "dry_run": False}, headers=headers)
    assert made.status_code == 201, made.text
    stored = await db.fetch("SELECT recipient, userid FROM broadcast_recipients ORDER BY 1")
    assert [tuple(r) for r in stored] == [("wmB", "zhangsan"), ("wmC", "lisi")]


# --- end to end, against the simulator ------------------------------------------------------


async def templates(simulator: Simulator, app: RegisteredApp) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await sim(
        simulator, "GET", f"/sim/corps/{app.corp_id}/msg_templates"
    )
    return found


async def broadcast(
    live: httpx.AsyncClient, headers: dict[str, str], app: RegisteredApp, tags: list[str], text: str
) -> dict[str, Any]:
    answer = await live.post(
        URL,
        json={"app": app.slug, "audience": {"tags": tags}, "content": {"text": text}},
        headers=headers,
    )
    assert answer.status_code == 201, answer.text
    made: dict[str, Any] = answer.json()
    return made


async def once(
    live: httpx.AsyncClient, headers: dict[str, str], broadcast_id: int, holds: Any
) -> dict[str, Any]:
    """The broadcast once `holds(broadcast)` is true."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal found
        found = (await live.get(f"{URL}/{broadcast_id}", headers=headers)).json()
        return bool(holds(found))

    await wait_for(check, within=20)
    return found


def tasks_made(b: dict[str, Any]) -> bool:
    return all(t["msgid"] for m in b["members"] for t in m["tasks"])


def completed(b: dict[str, Any]) -> bool:
    return b["completed_at"] is not None


async def test_a_broadcast_to_a_tag_is_one_task_per_member_however_its_calls_fail(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    receiver: Receiver,
) -> None:
    app = wecom_app
    headers = await key_header(settings, Scope.WRITE)
    await subscribe(live, await key_header(settings, Scope.ADMIN), receiver, "broadcast.completed")
    await known_tags(db, app, T1, T2)
    await sim(
        simulator, "PUT", f"/sim/corps/{app.corp_id}/limits", json={"distributing_seconds": 0.3}
    )
    for userid, external, tags in [
        ("zhangsan", "wmA", [T1]),
        ("zhangsan", "wmB", [T1]),
        ("zhangsan", "wmGONE", [T1]),  # deleted at WeCom since: in the task's fail_list
        ("zhangsan", "wmX", [T2]),  # another tag: not in the audience
        ("lisi", "wmC", [T1]),
        ("lisi", "wmLEFT", [T1]),  # leaves after the task is made: not a friend (2)
    ]:
        await befriend(db, app, userid, external, tags=tags, simulator=simulator)
    await befriend(db, app, "lisi", "wmCHURNED", tags=[T1], status="deleted_by_customer")
    await sim(simulator, "DELETE", f"/sim/corps/{app.corp_id}/customers/wmGONE/follows/zhangsan")
    # The first add_msg_template fails before WeCom acts (-1); the second is acted on and
    # its answer lost (HTTP 502 after the task was made). Both are retried.
    simulator.state.faults = [
        Fault(api="externalcontact/add_msg_template", errcode=-1, times=1),
        Fault(api="externalcontact/add_msg_template", http_status=502, times=1, after=True),
    ]

    made = await broadcast(live, headers, app, [T1], "会员日：全场八折")
    assert made["audience_size"] == 5
    shown = await once(live, headers, made["id"], tasks_made)
    made_at_wecom = await templates(simulator, app)
    assert len(made_at_wecom) == 2, made_at_wecom  # one per member, never a second
    by_member = {t["tasks"][0]["userid"]: t for t in made_at_wecom}
    assert {
        u: {r["external_userid"] for r in t["tasks"][0]["recipients"]} for u, t in by_member.items()
    } == {
        "zhangsan": {"wmA", "wmB"},
        "lisi": {"wmC", "wmLEFT"},
    }
    assert {u: t["fail_list"] for u, t in by_member.items()} == {"zhangsan": ["wmGONE"], "lisi": []}
    tasks = {m["userid"]: m["tasks"][0] for m in shown["members"]}
    assert {u: t["msgid"] for u, t in tasks.items()} == {
        u: t["msgid"] for u, t in by_member.items()
    }
    assert sorted(t["adopted"] for t in tasks.values()) == [False, True]
    calls = [c for c in simulator.state.calls if c.api == "externalcontact/add_msg_template"]
    assert len(calls) == 3  # -1, the lost answer (adopted, never repeated), and the other

    await sim(simulator, "DELETE", f"/sim/corps/{app.corp_id}/customers/wmLEFT/follows/lisi")
    for msgid in (t["msgid"] for t in tasks.values()):
        await sim(simulator, "POST", f"/sim/corps/{app.corp_id}/msg_templates/{msgid}/confirm")
    done = await once(live, headers, made["id"], completed)

    recorded = {
        r["external_userid"]: r["status"]
        for t in await templates(simulator, app)
        for task in t["tasks"]
        for r in task["recipients"]
    }
    assert recorded == {"wmA": 1, "wmB": 1, "wmC": 1, "wmLEFT": 2}
    assert done["status"] == "completed"
    assert done["funnel"] == {
        "audience": 5,
        "tasks": 2,
        "confirmed": 2,
        "sent": 3,
        "not_friend": 1,
        "over_limit": 0,
        "failed": 1,
        "pending": 0,
    }
    assert done["failures"] == {"fail_list": 1}
    rows = await db.fetch("SELECT recipient, status FROM broadcast_recipients")
    statuses = {row["recipient"]: row["status"] for row in rows}
    assert statuses == {
        "wmA": "sent",
        "wmB": "sent",
        "wmC": "sent",
        "wmGONE": "unsendable",
        "wmLEFT": "not_friend",
    }
    await until(lambda: bool(receiver.ids("broadcast.completed")))
    [message] = [r.body for r in receiver.received if r.body["type"] == "broadcast.completed"]
    assert message["data"]["broadcast_id"] == made["id"]
    assert message["data"]["status"] == "completed"
    assert message["data"]["funnel"] == done["funnel"]
    assert receiver.unverified == []


async def test_over_limit_remind_and_cancel_as_wecom_answers_them(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    app = wecom_app
    headers = await key_header(settings, Scope.WRITE)
    await known_tags(db, app, T1, T2)
    # The corp's receive limit: one mass message per customer an hour (a setting of the corp,
    # which WeCom has changed over the years: wecom-hub only reports status 3).
    await sim(
        simulator,
        "PUT",
        f"/sim/corps/{app.corp_id}/limits",
        json={"receive_limit": 1, "receive_window_seconds": 3600, "distributing_seconds": 0.2},
    )
    await befriend(db, app, "zhangsan", "wmA", tags=[T1, T2], simulator=simulator)
    await befriend(db, app, "zhangsan", "wmB", tags=[T1], simulator=simulator)
    await befriend(db, app, "zhangsan", "wmC", tags=[T2], simulator=simulator)

    first = await broadcast(live, headers, app, [T1], "第一条")
    msgid = (await once(live, headers, first["id"], tasks_made))["members"][0]["tasks"][0]["msgid"]
    await sim(simulator, "POST", f"/sim/corps/{app.corp_id}/msg_templates/{msgid}/confirm")
    assert (await once(live, headers, first["id"], completed))["funnel"]["sent"] == 2

    second = await broadcast(live, headers, app, [T2], "第二条")
    shown = await once(live, headers, second["id"], tasks_made)
    msgid = shown["members"][0]["tasks"][0]["msgid"]

    remind = f"{URL}/{second['id']}/remind"
    simulator.state.faults = [Fault(api="externalcontact/remind_groupmsg_send", http_status=503)]
    problem(await live.post(remind, headers=headers), 502, "broadcast_wecom_failed")
    simulator.state.faults = []
    for _ in range(3):
        answer = await live.post(remind, headers=headers)
        assert answer.status_code == 200, answer.text
        assert [m["userid"] for m in answer.json()["reminded"]] == ["zhangsan"]
    body = problem(await live.post(remind, headers=headers), 429, "broadcast_remind_limit")
    assert "41094" in body["detail"] and body["members"] == ["zhangsan"]
    [at_wecom] = [t for t in await templates(simulator, app) if t["msgid"] == msgid]
    assert len(at_wecom["reminders"]) == 3
    reminded = (await live.get(f"{URL}/{second['id']}", headers=headers)).json()
    assert len(reminded["members"][0]["tasks"][0]["reminders"]) == 3

    await sim(simulator, "POST", f"/sim/corps/{app.corp_id}/msg_templates/{msgid}/confirm")
    done = await once(live, headers, second["id"], completed)
    assert done["funnel"] == {
        "audience": 2,
        "tasks": 1,
        "confirmed": 1,
        "sent": 1,
        "not_friend": 0,
        "over_limit": 1,  # wmA had its one an hour already
        "failed": 0,
        "pending": 0,
    }
    problem(await live.post(remind, headers=headers), 409, "broadcast_finished")

    third = await broadcast(live, headers, app, [T1, T2], "第三条")
    msgid = (await once(live, headers, third["id"], tasks_made))["members"][0]["tasks"][0]["msgid"]
    answer = await live.post(f"{URL}/{third['id']}/cancel", headers=headers)
    assert answer.status_code == 200, answer.text
    assert [m["msgid"] for m in answer.json()["cancelled"]] == [msgid]
    assert answer.json()["broadcast"]["status"] == "cancelled"
    [at_wecom] = [t for t in await templates(simulator, app) if t["msgid"] == msgid]
    assert at_wecom["cancelled"] is True
    confirmed = await sim(
        simulator, "POST", f"/sim/corps/{app.corp_id}/msg_templates/{msgid}/confirm"
    )
    assert confirmed["sent_by"] == []  # a cancelled task cannot be sent any more
    done = await once(live, headers, third["id"], completed)
    assert done["status"] == "cancelled"
    assert (done["funnel"]["pending"], done["funnel"]["sent"]) == (3, 0)
    again = await live.post(f"{URL}/{third['id']}/remind", headers=headers)
    problem(again, 409, "broadcast_finished")


async def test_a_cancel_between_a_lost_answer_and_its_retry_cancels_the_task_at_wecom(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """add_msg_template made the task but its answer was lost; the operator cancels before
    the retry. The retry must find that task and cancel it at WeCom, or the member is
    still asked to send a broadcast that was stopped."""
    app = wecom_app
    headers = await key_header(settings, Scope.WRITE)
    await known_tags(db, app, T1)
    await sim(
        simulator, "PUT", f"/sim/corps/{app.corp_id}/limits", json={"distributing_seconds": 0.1}
    )
    await befriend(db, app, "zhangsan", "wmA", tags=[T1], simulator=simulator)
    simulator.state.faults = [
        Fault(api="externalcontact/add_msg_template", http_status=502, times=1, after=True),
        # The retry's first search is told "still distributing": the cancel below has
        # seconds, not a millisecond, to come before the retry that finds the task.
        Fault(api="externalcontact/get_groupmsg_list_v2", errcode=41063, times=1),
    ]
    made = await broadcast(live, headers, app, [T1], "限时")

    async def made_at_wecom() -> bool:
        return bool(await templates(simulator, app))

    await wait_for(made_at_wecom, within=10)
    answer = await live.post(f"{URL}/{made['id']}/cancel", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["cancelled"] == []  # no msgid known yet: nothing to cancel by it

    done = await once(live, headers, made["id"], completed)
    [at_wecom] = await templates(simulator, app)  # found again, never made a second time
    assert at_wecom["cancelled"] is True
    [task] = done["members"][0]["tasks"]
    assert (task["msgid"], task["adopted"], task["status"]) == (
        at_wecom["msgid"],
        True,
        "cancelled",
    )
    assert (done["status"], done["funnel"]["tasks"], done["funnel"]["pending"]) == (
        "cancelled",
        1,
        1,
    )


async def test_a_broadcast_to_customer_groups_is_one_task_per_owner(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    app = wecom_app
    headers = await key_header(settings, Scope.WRITE)
    await sim(
        simulator, "PUT", f"/sim/corps/{app.corp_id}/limits", json={"distributing_seconds": 0.1}
    )
    for chat_id, owner in (("wrG1", "zhangsan"), ("wrG2", "zhangsan"), ("wrG3", "lisi")):
        simulator.state.change_group(app.corp_id, chat_id, owner=owner, joined=["wmA"], left=[])
        await group(db, app, chat_id, owner)
    for owner in ("zhangsan", "lisi"):
        simulator.state.corp(app.corp_id).members.append(owner)
    await group(db, app, "wrGONE", "zhangsan")
    await db.execute("UPDATE customer_groups SET dismissed_at = now() WHERE chat_id = 'wrGONE'")

    answer = await live.post(
        URL,
        json={
            "app": app.slug,
            "audience": {"owners": ["zhangsan", "lisi"]},
            "content": {"text": "群公告"},
        },
        headers=headers,
    )
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert (made["chat_type"], made["audience_size"]) == ("group", 3)
    shown = await once(live, headers, made["id"], tasks_made)
    at_wecom = await templates(simulator, app)
    assert sorted(
        (t["chat_type"], t["sender"], sorted(r["chat_id"] for r in t["tasks"][0]["recipients"]))
        for t in at_wecom
    ) == [("group", "lisi", ["wrG3"]), ("group", "zhangsan", ["wrG1", "wrG2"])]
    for task in (t for m in shown["members"] for t in m["tasks"]):
        await sim(
            simulator, "POST", f"/sim/corps/{app.corp_id}/msg_templates/{task['msgid']}/confirm"
        )
    done = await once(live, headers, made["id"], completed)
    assert done["funnel"] == {
        "audience": 3,
        "tasks": 2,
        "confirmed": 2,
        "sent": 3,
        "not_friend": 0,
        "over_limit": 0,
        "failed": 0,
        "pending": 0,
    }


# --- the CLI --------------------------------------------------------------------------------


def test_the_cli_sends_lists_shows_and_cancels_with_the_same_service(
    database_url: str,
    secret_key: str,
    monkeypatch: pytest.MonkeyPatch,
    simulator: Simulator,
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.config import get_settings
    from tests.conftest import TRUNCATE_ALL, random_app, register

    for name, value in (
        ("DATABASE_URL", database_url),
        ("SECRET_KEY", secret_key),
        ("WECOM_API_BASE_URL", simulator.url),
    ):
        monkeypatch.setenv(f"WECOM_HUB_{name}", value)
    get_settings.cache_clear()
    app = random_app("shop")

    async def prepare() -> None:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            await connection.execute(TRUNCATE_ALL)
            await register(get_settings(), app)
            await known_tags(connection, app, T1)
            await befriend(connection, app, "zhangsan", "wmA", tags=[T1], state="store_a")
            await befriend(connection, app, "lisi", "wmB", tags=[T1], state="store_b")
        finally:
            await connection.close()

    asyncio.run(prepare())
    runner = CliRunner()
    try:
        send = ["broadcasts", "send", "--app", "shop", "--tag", T1, "--text", "会员日"]
        dry = runner.invoke(cli, [*send, "--state", "store_a", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "zhangsan" in dry.output and "lisi" not in dry.output
        assert "dry run: 1 would receive it" in dry.output
        refused = runner.invoke(cli, [*send[:-2], "--text", "x" * 4001])
        assert refused.exit_code == 2 and "content.text" in refused.output
        sent = runner.invoke(cli, send)
        assert sent.exit_code == 0, sent.output
        assert "broadcast 1: 2 recipients, 2 member(s)" in sent.output
        listed = runner.invoke(cli, ["broadcasts", "list"])
        assert "会员日" in listed.output and "sending" in listed.output
        shown = runner.invoke(cli, ["broadcasts", "show", "1"])
        assert "audience 2  tasks 0" in shown.output, shown.output
        early = runner.invoke(cli, ["broadcasts", "remind", "1"])
        assert early.exit_code == 1 and "not made yet" in early.output
        cancelled = runner.invoke(cli, ["broadcasts", "cancel", "1"])
        assert cancelled.exit_code == 0, cancelled.output
        assert "broadcast 1 (shop, single): cancelled" in cancelled.output
        missing = runner.invoke(cli, ["broadcasts", "show", "2"])
        assert missing.exit_code == 1 and "no broadcast 2" in missing.output
    finally:
        get_settings.cache_clear()
