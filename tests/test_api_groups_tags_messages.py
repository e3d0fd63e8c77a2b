"""GET /api/v1/groups, /groups/{chat_id}, /tags and /messages: filters and keyset pages."""

from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.apikeys import Scope
from app.config import Settings
from app.processing.processor import EventProcessor
from app.simulator.callbacks import event_xml, text_message
from tests.api_helpers import auth, hub_state, problem
from tests.conftest import RegisteredApp, random_app, register
from tests.processing_helpers import deliver, drain

T0 = 1_700_000_000


@pytest.fixture
def processor(hub: FastAPI) -> EventProcessor:
    return EventProcessor(hub_state(hub).sessionmaker, worker="test-processor")


@pytest.fixture
async def headers(hub: FastAPI) -> dict[str, str]:
    return await auth(hub, Scope.READ)


@pytest.fixture
async def other_app(settings: Settings, wecom_app: RegisteredApp) -> RegisteredApp:
    other = random_app("other")
    await register(settings, other)
    return other


async def listed(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], params: dict[str, Any]
) -> list[dict[str, Any]]:
    response = await client.get(url, params=params, headers=headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def every_page(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """All items of a list, two per page, checking each page on the way."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        page = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = (await client.get(url, params=page, headers=headers)).json()
        assert len(body["data"]) <= 2
        items += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the pages never ended")


@pytest.mark.parametrize("url", ["/api/v1/groups", "/api/v1/tags", "/api/v1/messages"])
async def test_refused_without_a_key(client: httpx.AsyncClient, url: str) -> None:
    problem(await client.get(url), 401, "missing_api_key")


@pytest.mark.parametrize("url", ["/api/v1/groups", "/api/v1/tags", "/api/v1/messages"])
async def test_an_unknown_app_is_a_refused_filter(
    client: httpx.AsyncClient, headers: dict[str, str], wecom_app: RegisteredApp, url: str
) -> None:
    body = problem(
        await client.get(url, params={"app": "nope"}, headers=headers), 422, "validation_failed"
    )
    assert body["errors"] == [{"field": "app", "message": "no app 'nope'"}]


# --- groups ---------------------------------------------------------------------------


def chat(app: RegisteredApp, chat_id: str, change: str, t: int, **fields: str | list[str]) -> str:
    return event_xml(
        app.corp_id,
        "change_external_chat",
        {"ChatId": chat_id, "ChangeType": change, **fields},
        create_time=T0 + t,
    )


@pytest.fixture
async def groups(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    other_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    """demo: wrC1 "Spring sale" (zhangsan; wmA in, wmB joined then quit), wrC2 "Winter sale"
    (lisi, dismissed); other: wrC3 "spring launch" (zhangsan)."""
    demo = wecom_app
    for app, message in [
        (demo, chat(demo, "wrC1", "create", 0)),
        (demo, chat(demo, "wrC2", "create", 1)),
        (other_app, chat(other_app, "wrC3", "create", 2)),
        (
            demo,
            chat(
                demo,
                "wrC1",
                "update",
                3,
                UpdateDetail="add_member",
                JoinScene="3",
                MemChangeList=["wmA", "wmB"],
            ),
        ),
        (
            demo,
            chat(demo, "wrC1", "update", 4, UpdateDetail="del_member", MemChangeList=["wmB"]),
        ),
        (demo, chat(demo, "wrC2", "dismiss", 5)),
    ]:
        await deliver(client, app, message)
        await drain(processor)  # one at a time: the groups' ids follow this order
    await db.executemany(
        "UPDATE customer_groups SET name = $2, owner = $3 WHERE chat_id = $1",
        [
            ("wrC1", "Spring sale", "zhangsan"),
            ("wrC2", "Winter sale", "lisi"),
            ("wrC3", "spring launch", "zhangsan"),
        ],
    )


@pytest.mark.usefixtures("groups")
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["wrC3", "wrC2", "wrC1"]),
        ({"app": "demo"}, ["wrC2", "wrC1"]),
        ({"app": "other"}, ["wrC3"]),
        ({"owner": "zhangsan"}, ["wrC3", "wrC1"]),
        ({"q": "SPRING"}, ["wrC3", "wrC1"]),
        ({"q": "_"}, []),  # taken literally, not as a wildcard
        ({"dismissed": "true"}, ["wrC2"]),
        ({"dismissed": "false"}, ["wrC3", "wrC1"]),
        ({"dismissed": "false", "owner": "lisi"}, []),
    ],
)
async def test_group_filters(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    params: dict[str, Any],
    expected: list[str],
) -> None:
    items = await listed(client, "/api/v1/groups", headers, params)
    assert [g["chat_id"] for g in items] == expected


@pytest.mark.usefixtures("groups")
async def test_groups_page_and_count_members(
    client: httpx.AsyncClient, headers: dict[str, str], wecom_app: RegisteredApp
) -> None:
    items = await every_page(client, "/api/v1/groups", headers, {})
    assert [g["chat_id"] for g in items] == ["wrC3", "wrC2", "wrC1"]
    spring = items[2]
    assert (spring["corp_id"], spring["name"], spring["owner"], spring["member_count"]) == (
        wecom_app.corp_id,
        "Spring sale",
        "zhangsan",
        1,  # wmB quit
    )
    assert datetime.fromisoformat(spring["created_at"]).timestamp() == T0
    assert datetime.fromisoformat(items[1]["dismissed_at"]).timestamp() == T0 + 5


@pytest.mark.usefixtures("groups")
async def test_a_group_with_its_members(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/api/v1/groups/wrC1", headers=headers)
    assert response.status_code == 200, response.text
    group = response.json()
    assert (group["name"], group["member_count"]) == ("Spring sale", 1)
    members = {m["member_id"]: m for m in group["members"]}
    assert set(members) == {"wmA", "wmB"}
    assert members["wmA"]["join_scene"] == 3 and members["wmA"]["quit_at"] is None
    assert datetime.fromisoformat(members["wmB"]["quit_at"]).timestamp() == T0 + 4
    problem(await client.get("/api/v1/groups/wrNope", headers=headers), 404, "group_not_found")
    problem(
        await client.get("/api/v1/groups/wrC1", params={"app": "other"}, headers=headers),
        404,
        "group_not_found",
    )


# --- tags -----------------------------------------------------------------------------


@pytest.fixture
async def tags(wecom_app: RegisteredApp, other_app: RegisteredApp, db: asyncpg.Connection) -> None:
    """demo: etA, etB (group etG1 "Level"), etC (no group), etD deleted; other: etA, etE."""
    await db.executemany(
        "INSERT INTO tag_groups (corp_id, group_id, name) VALUES ($1, $2, $3)",
        [(wecom_app.corp_id, "etG1", "Level"), (other_app.corp_id, "etG2", "Source")],
    )
    await db.executemany(
        "INSERT INTO tags (corp_id, tag_id, group_id, name, deleted_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        [
            (wecom_app.corp_id, "etA", "etG1", "VIP", None),
            (wecom_app.corp_id, "etB", "etG1", "New", None),
            (wecom_app.corp_id, "etC", None, "Loose", None),
            (wecom_app.corp_id, "etD", "etG1", "Old", datetime.fromtimestamp(T0, UTC)),
            (other_app.corp_id, "etA", "etG2", "Expo", None),
            (other_app.corp_id, "etE", "etG2", "Web", None),
        ],
    )


def tag_labels(items: list[dict[str, Any]], other_corp: str) -> list[str]:
    return [("other:" if t["corp_id"] == other_corp else "") + t["tag_id"] for t in items]


@pytest.mark.usefixtures("tags")
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"app": "demo"}, ["etC", "etB", "etA"]),
        ({"app": "demo", "include_deleted": "true"}, ["etD", "etC", "etB", "etA"]),
        ({"group_id": "etG1"}, ["etB", "etA"]),
        ({"group_id": "etG1", "include_deleted": "true"}, ["etD", "etB", "etA"]),
        ({"app": "other"}, ["other:etE", "other:etA"]),
    ],
)
async def test_tag_filters(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    other_app: RegisteredApp,
    params: dict[str, Any],
    expected: list[str],
) -> None:
    items = await listed(client, "/api/v1/tags", headers, params)
    assert tag_labels(items, other_app.corp_id) == expected


@pytest.mark.usefixtures("tags")
async def test_tags_page_through_both_corps_once(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    wecom_app: RegisteredApp,
    other_app: RegisteredApp,
) -> None:
    items = await every_page(client, "/api/v1/tags", headers, {"include_deleted": "true"})
    keys = [(t["corp_id"], t["tag_id"]) for t in items]
    assert keys == sorted(keys, reverse=True)
    assert len(keys) == len(set(keys)) == 6
    vip = next(t for t in items if (t["corp_id"], t["tag_id"]) == (wecom_app.corp_id, "etA"))
    assert (vip["name"], vip["group_id"], vip["group_name"], vip["deleted_at"]) == (
        "VIP",
        "etG1",
        "Level",
        None,
    )
    loose = next(t for t in items if t["tag_id"] == "etC")
    assert (loose["group_id"], loose["group_name"]) == (None, None)


# --- messages -------------------------------------------------------------------------


@pytest.fixture
async def messages(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    other_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    """app: m1 zhangsan, m2 lisi (demo), m3 zhangsan (other); then kf: k1 wmA to wkA, k2 wmB
    to wkB (demo). Ids in that order."""
    for app, sender, msg_id, t in [
        (wecom_app, "zhangsan", "m1", 0),
        (wecom_app, "lisi", "m2", 10),
        (other_app, "zhangsan", "m3", 20),
    ]:
        await deliver(
            client,
            app,
            text_message(
                corp_id=app.corp_id,
                from_user=sender,
                content=f"hi {t}",
                msg_id=msg_id,
                create_time=T0 + t,
            ),
        )
        await drain(processor)
    await db.executemany(
        """
        INSERT INTO messages (corp_id, app_id, source, msg_id, sender, open_kfid, msg_type,
                              content, payload, sent_at)
        SELECT corp_id, id, 'kf', $2, $3, $4, 'text', $5, '{}', $6 FROM apps WHERE slug = $1
        """,
        [
            ("demo", "k1", "wmA", "wkA", "多少钱", datetime.fromtimestamp(T0 + 30, UTC)),
            ("demo", "k2", "wmB", "wkB", None, datetime.fromtimestamp(T0 + 40, UTC)),
        ],
    )


def at(seconds: int) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


@pytest.mark.usefixtures("messages")
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["k2", "k1", "m3", "m2", "m1"]),
        ({"app": "demo"}, ["k2", "k1", "m2", "m1"]),
        ({"app": "other"}, ["m3"]),
        ({"source": "app"}, ["m3", "m2", "m1"]),
        ({"source": "kf"}, ["k2", "k1"]),
        ({"sender": "zhangsan"}, ["m3", "m1"]),
        ({"sender": "zhangsan", "app": "demo"}, ["m1"]),
        ({"open_kfid": "wkA"}, ["k1"]),
        ({"since": at(10)}, ["k2", "k1", "m3", "m2"]),
        ({"until": at(10)}, ["m1"]),
        ({"since": at(10), "until": at(40)}, ["k1", "m3", "m2"]),
    ],
)
async def test_message_filters(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    params: dict[str, Any],
    expected: list[str],
) -> None:
    items = await listed(client, "/api/v1/messages", headers, params)
    assert [m["msg_id"] for m in items] == expected


@pytest.mark.usefixtures("messages")
async def test_messages_page_and_name_their_app(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    items = await every_page(client, "/api/v1/messages", headers, {})
    assert [m["msg_id"] for m in items] == ["k2", "k1", "m3", "m2", "m1"]
    ids = [m["id"] for m in items]
    assert ids == sorted(ids, reverse=True)
    k1, m3 = items[1], items[2]
    assert {k: k1[k] for k in ("app", "source", "sender", "open_kfid", "msg_type", "content")} == {
        "app": "demo",
        "source": "kf",
        "sender": "wmA",
        "open_kfid": "wkA",
        "msg_type": "text",
        "content": "多少钱",
    }
    assert (m3["app"], m3["source"], m3["content"]) == ("other", "app", "hi 20")
    assert datetime.fromisoformat(m3["sent_at"]).timestamp() == T0 + 20
    assert "payload" not in m3


async def test_message_source_must_be_known(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    body = problem(
        await client.get("/api/v1/messages", params={"source": "sms"}, headers=headers),
        422,
        "validation_failed",
    )
    assert [e["field"] for e in body["errors"]] == ["source"]
