"""The loop end to end, wecom-hub running with its processor and action runner, WeCom
played by the simulator over real HTTP: a channel made through the API → a customer scans
its code → WeCom's add_external_contact callback → the channel's welcome is sent and its
tag applied → its numbers count the customer (and their churn), and `customer.added` names
the channel. The same for a join way: a member who joins through it counts as its join."""

import json
import time

import asyncpg
import httpx

from app.config import Settings
from app.simulator.callbacks import add_external_contact, event_xml
from tests.api_helpers import key_header
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, settled, sim, wait_for

MEMBER = "member000"  # the live fixture's one member


async def test_a_scanned_channel_welcomes_tags_and_counts_its_customer(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    headers = await key_header(settings)
    corp = simulator.state.corp(wecom_app.corp_id)
    tag = next(iter(corp.tag_groups.values()))["tag"][0]["id"]
    await db.execute(
        "INSERT INTO tags (corp_id, tag_id, name) VALUES ($1, $2, 't')", wecom_app.corp_id, tag
    )
    hook = await live.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["customer.added"]},
        headers=headers,
    )
    assert hook.status_code == 201, hook.text
    created = await live.post(
        "/api/v1/channels",
        json={
            "name": "门店A",
            "app": wecom_app.slug,
            "userids": [MEMBER],
            "welcome": {"text": "你好 {customer_name}，欢迎光临门店A"},
            "add_tags": [tag],
        },
        headers=headers,
    )
    assert created.status_code == 201, created.text
    channel = created.json()

    scan = await sim(
        simulator,
        "POST",
        f"/sim/corps/{wecom_app.corp_id}/contact_ways/{channel['config_id']}/scan",
        json={"name": "王小明"},
    )
    assert (scan["state"], scan["userid"]) == (channel["state"], MEMBER)
    customer = scan["external_userid"]
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id=MEMBER,
            external_user_id=customer,
            state=scan["state"],
            welcome_code=scan["welcome_code"],
        ),
    )
    assert await settled(db, "welcome", customer) == "succeeded"
    assert await settled(db, "mark_tag", customer) == "succeeded"
    sent = [
        c.body
        for c in simulator.state.calls
        if c.api == "externalcontact/send_welcome_msg" and c.errcode == 0
    ]
    assert [s["text"]["content"] for s in sent] == ["你好 王小明，欢迎光临门店A"]
    assert sent[0]["welcome_code"] == scan["welcome_code"]
    assert corp.contacts[customer].follows[MEMBER]["tag_id"] == [tag]

    message = await db.fetchval(
        "SELECT payload -> 'message' FROM actions WHERE kind = 'webhook'"
        " AND payload -> 'message' ->> 'type' = 'customer.added'"
    )
    assert message is not None
    assert json.loads(message)["data"]["channel_id"] == channel["id"]

    url = f"/api/v1/channels/{channel['id']}/stats"
    stats = (await live.get(url, headers=headers)).json()
    counts = {k: stats[k] for k in ("added", "active", "churned", "churned_7d", "welcomed")}
    assert counts == {"added": 1, "active": 1, "churned": 0, "churned_7d": 0, "welcomed": 1}
    assert stats["tagged"] == 1 and stats["state"] == channel["state"]
    assert len(stats["by_day"]) >= 30 and sum(d["added"] for d in stats["by_day"]) == 1
    assert stats["by_day"][-1]["added"] == 1  # today, in Asia/Shanghai

    # The customer deletes the member a moment later: churned within 7 days.
    await deliver(
        live,
        wecom_app,
        event_xml(
            wecom_app.corp_id,
            "change_external_contact",
            {"ChangeType": "del_follow_user", "UserID": MEMBER, "ExternalUserID": customer},
            create_time=int(time.time()) + 1,
        ),
    )

    async def churned() -> bool:
        body = (await live.get(url, headers=headers)).json()
        return bool(body["churned"] == 1)

    await wait_for(churned)
    stats = (await live.get(url, headers=headers)).json()
    assert (stats["added"], stats["active"], stats["churned_7d"]) == (1, 0, 1)

    by_channel = await live.get(
        "/api/v1/stats/customers",
        params={"group_by": "channel", "app": wecom_app.slug},
        headers=headers,
    )
    assert by_channel.status_code == 200, by_channel.text
    rows = {row["key"]: row for row in by_channel.json()["data"]}
    assert rows[str(channel["id"])]["added"] == 1


async def test_a_join_way_counts_who_joined_through_it(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    headers = await key_header(settings)
    chat_id = next(iter(simulator.state.corp(wecom_app.corp_id).groups))
    created = await live.post(
        "/api/v1/channels",
        json={"name": "春季群", "app": wecom_app.slug, "kind": "join_way", "chat_ids": [chat_id]},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    channel = created.json()
    joined = await sim(
        simulator, "POST", f"/sim/corps/{wecom_app.corp_id}/join_ways/{channel['config_id']}/join"
    )
    await deliver(
        live,
        wecom_app,
        event_xml(
            wecom_app.corp_id,
            "change_external_chat",
            {
                "ChatId": chat_id,
                "ChangeType": "update",
                "UpdateDetail": "add_member",
                "JoinScene": "3",
                "MemChangeCnt": "1",
                "MemChangeList": [joined["external_userid"]],
            },
        ),
    )

    async def counted() -> bool:
        stats = (await live.get(f"/api/v1/channels/{channel['id']}/stats", headers=headers)).json()
        return bool(stats["joined"] == 1)

    await wait_for(counted)
    state = await db.fetchval(
        "SELECT state FROM group_members WHERE member_id = $1", joined["external_userid"]
    )
    assert state == channel["state"]


async def test_a_channel_made_while_customers_arrive_welcomes_its_first_scan(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """The processor caches each app's rules; a channel's new welcome rule must be in force
    for the next event all the same (announced by the trigger on `rules`, migration 0016),
    not once the cache has aged."""
    corp = wecom_app.corp_id
    earlier = await sim(
        simulator,
        "POST",
        f"/sim/corps/{corp}/customers",
        json={"userid": MEMBER, "external_userid": "wmEARLIER"},
    )
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=corp,
            user_id=MEMBER,
            external_user_id="wmEARLIER",
            state="",
            welcome_code=earlier["welcome_code"],
        ),
    )
    # No welcome rule yet: the app's (empty) rules are now what the processor has cached.
    assert await settled(db, "welcome", "wmEARLIER") == "skipped"
    created = await live.post(
        "/api/v1/channels",
        json={
            "name": "直播间",
            "app": wecom_app.slug,
            "userids": [MEMBER],
            "welcome": {"text": "欢迎"},
        },
        headers=await key_header(settings),
    )
    assert created.status_code == 201, created.text
    path = f"/sim/corps/{corp}/contact_ways/{created.json()['config_id']}/scan"
    scan = await sim(simulator, "POST", path, json={})
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=corp,
            user_id=MEMBER,
            external_user_id=scan["external_userid"],
            state=scan["state"],
            welcome_code=scan["welcome_code"],
        ),
    )
    assert await settled(db, "welcome", scan["external_userid"]) == "succeeded"
