"""GET /api/v1/customers and /customers/{external_userid}: filters, keyset pages, and the
detail that says why a customer got no welcome."""

import base64
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.apikeys import Scope
from app.config import Settings
from app.processing.processor import EventProcessor
from app.simulator.callbacks import add_external_contact, event_xml
from tests.api_helpers import auth, hub_state, problem
from tests.conftest import RegisteredApp, random_app, register
from tests.processing_helpers import deliver, drain

T0 = 1_700_000_000
URL = "/api/v1/customers"


def at(seconds: int) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


def contact(
    app: RegisteredApp, change: str, member: str, external: str, t: int, **extra: str
) -> str:
    fields = {"ChangeType": change, "UserID": member, "ExternalUserID": external, **extra}
    return event_xml(app.corp_id, "change_external_contact", fields, create_time=T0 + t)


@pytest.fixture
def processor(hub: FastAPI) -> EventProcessor:
    return EventProcessor(hub_state(hub).sessionmaker, worker="test-processor")


@pytest.fixture
async def headers(hub: FastAPI) -> dict[str, str]:
    return await auth(hub, Scope.READ)


@pytest.fixture
async def other_app(settings: Settings, wecom_app: RegisteredApp) -> RegisteredApp:
    """A second app of another corp, which also knows a customer `wmA`."""
    other = random_app("other")
    await register(settings, other)
    return other


@pytest.fixture
async def customers(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    other_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    """demo: wmA active (zhangsan, expo), wmB churned (lisi, store_sh), wmC half (zhangsan,
    expo), wmD deleted by lisi, wmE followed by zhangsan (store_bj) and lisi (expo);
    other: wmA active (wangwu, expo). Names and tags as enrichment would set them."""
    demo = wecom_app
    for message in [
        contact(demo, "add_external_contact", "zhangsan", "wmA", 0, State="expo"),
        contact(demo, "add_external_contact", "lisi", "wmB", 10, State="store_sh"),
        contact(demo, "del_follow_user", "lisi", "wmB", 20),
        contact(demo, "add_half_external_contact", "zhangsan", "wmC", 30, State="expo"),
        contact(demo, "add_external_contact", "lisi", "wmD", 40),
        contact(demo, "del_external_contact", "lisi", "wmD", 45),
        contact(demo, "add_external_contact", "zhangsan", "wmE", 50, State="store_bj"),
        contact(demo, "add_external_contact", "lisi", "wmE", 60, State="expo"),
    ]:
        await deliver(client, demo, message)
    await drain(processor)
    await deliver(
        client,
        other_app,
        contact(other_app, "add_external_contact", "wangwu", "wmA", 70, State="expo"),
    )
    await drain(processor)
    await db.executemany(
        "UPDATE external_contacts SET name = $3 WHERE corp_id = $1 AND external_userid = $2",
        [
            (demo.corp_id, "wmA", "Alice Li"),
            (demo.corp_id, "wmB", "Bob"),
            (demo.corp_id, "wmC", "alice wang"),
            (demo.corp_id, "wmD", "李雷"),
            (other_app.corp_id, "wmA", "Alice Other"),
        ],
    )
    await db.executemany(
        "UPDATE follows SET tag_ids = $3"
        " WHERE corp_id = $1 AND userid = $2 AND external_userid = $4",
        [
            (demo.corp_id, "zhangsan", ["etVIP"], "wmA"),
            (demo.corp_id, "zhangsan", ["etNEW"], "wmC"),
            (demo.corp_id, "zhangsan", ["etVIP", "etNEW"], "wmE"),
        ],
    )


async def listed(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any]
) -> list[dict[str, Any]]:
    response = await client.get(URL, params=params, headers=headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def labels(items: list[dict[str, Any]], other_corp: str) -> list[str]:
    """`wmA` for demo's customers, `other:wmA` for the other corp's."""
    return [
        ("other:" if item["corp_id"] == other_corp else "") + item["external_userid"]
        for item in items
    ]


@pytest.mark.usefixtures("customers")
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["other:wmA", "wmE", "wmD", "wmC", "wmB", "wmA"]),
        ({"app": "demo"}, ["wmE", "wmD", "wmC", "wmB", "wmA"]),
        ({"app": "other"}, ["other:wmA"]),
        ({"q": "ALICE"}, ["other:wmA", "wmC", "wmA"]),
        ({"q": "%"}, []),  # taken literally, not as a wildcard
        ({"q": "李"}, ["wmD"]),
        ({"tag": "etVIP"}, ["wmE", "wmA"]),
        ({"tag": "etNEW"}, ["wmE", "wmC"]),
        ({"state": "expo"}, ["other:wmA", "wmE", "wmC", "wmA"]),
        ({"userid": "lisi"}, ["wmE", "wmD", "wmB"]),
        # one follow must match both: wmE's expo follow is lisi's, not zhangsan's
        ({"state": "expo", "userid": "zhangsan"}, ["wmC", "wmA"]),
        ({"status": "active"}, ["other:wmA", "wmE", "wmA"]),
        ({"status": "half"}, ["wmC"]),
        ({"status": "churned"}, ["wmB"]),
        ({"status": "deleted_by_member"}, ["wmD"]),
        ({"added_since": at(30)}, ["other:wmA", "wmE", "wmD", "wmC"]),
        ({"added_until": at(30)}, ["wmB", "wmA"]),
        ({"added_since": at(10), "added_until": at(41), "app": "demo"}, ["wmD", "wmC", "wmB"]),
    ],
)
async def test_each_filter_narrows(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    other_app: RegisteredApp,
    params: dict[str, Any],
    expected: list[str],
) -> None:
    assert labels(await listed(client, headers, params), other_app.corp_id) == expected


@pytest.mark.usefixtures("customers")
async def test_an_item_carries_the_customer_and_all_follows(
    client: httpx.AsyncClient, headers: dict[str, str], wecom_app: RegisteredApp
) -> None:
    assert await listed(client, headers, {"q": "wmE"}) == []  # names are searched, not ids
    [item] = [
        i for i in await listed(client, headers, {"app": "demo"}) if i["external_userid"] == "wmE"
    ]
    assert item["corp_id"] == wecom_app.corp_id and item["name"] is None
    assert datetime.fromisoformat(item["first_seen_at"]) == datetime.fromtimestamp(T0 + 50, UTC)
    assert [(f["userid"], f["status"], f["state"], f["tag_ids"]) for f in item["follows"]] == [
        ("lisi", "active", "expo", []),
        ("zhangsan", "active", "store_bj", ["etVIP", "etNEW"]),
    ]
    assert datetime.fromisoformat(item["follows"][0]["added_at"]).timestamp() == T0 + 60


@pytest.mark.usefixtures("customers")
async def test_pages_of_two_list_every_customer_once(
    client: httpx.AsyncClient, headers: dict[str, str], db: asyncpg.Connection
) -> None:
    expected = [
        (r["corp_id"], r["external_userid"])
        for r in await db.fetch(
            "SELECT corp_id, external_userid FROM external_contacts ORDER BY id DESC"
        )
    ]
    seen: list[tuple[str, str]] = []
    params: dict[str, Any] = {"limit": 2}
    for _ in range(len(expected)):
        body = (await client.get(URL, params=params, headers=headers)).json()
        assert len(body["data"]) <= 2
        seen += [(i["corp_id"], i["external_userid"]) for i in body["data"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == expected and len(expected) == 6


@pytest.mark.usefixtures("customers")
async def test_pages_stay_put_while_customers_arrive(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    db: asyncpg.Connection,
    wecom_app: RegisteredApp,
) -> None:
    originals = await db.fetch(
        "SELECT external_userid FROM external_contacts WHERE corp_id = $1 ORDER BY id DESC",
        wecom_app.corp_id,
    )
    first = (await client.get(URL, params={"app": "demo", "limit": 2}, headers=headers)).json()
    await db.execute(
        "INSERT INTO external_contacts (corp_id, external_userid)"
        " SELECT $1, 'wmNew' || i FROM generate_series(1, 3) i",
        wecom_app.corp_id,
    )
    seen = [i["external_userid"] for i in first["data"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        body = (
            await client.get(
                URL, params={"app": "demo", "limit": 2, "cursor": cursor}, headers=headers
            )
        ).json()
        seen += [i["external_userid"] for i in body["data"]]
        cursor = body["next_cursor"]
    assert seen == [r["external_userid"] for r in originals]
    # …and a new first page starts with the newcomers.
    fresh = await listed(client, headers, {"app": "demo", "limit": 3})
    assert [i["external_userid"] for i in fresh] == ["wmNew3", "wmNew2", "wmNew1"]


@pytest.mark.usefixtures("customers")
async def test_a_cursor_only_pages_the_list_it_came_from(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    cursor = (await client.get(URL, params={"limit": 2}, headers=headers)).json()["next_cursor"]
    refused = await client.get(
        URL, params={"limit": 2, "status": "active", "cursor": cursor}, headers=headers
    )
    problem(refused, 400, "invalid_cursor")
    # A forged position (a string where the list's key is an id) is refused, not a 500.
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**raw, "k": ["x"]}).encode()).decode()
    body = problem(
        await client.get(URL, params={"limit": 2, "cursor": forged}, headers=headers),
        400,
        "invalid_cursor",
    )
    assert body["detail"] == "cursor does not fit this list"


async def test_refused_without_a_key(client: httpx.AsyncClient) -> None:
    problem(await client.get(URL), 401, "missing_api_key")
    problem(await client.get(f"{URL}/wmA"), 401, "missing_api_key")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"app": "nope"}, "app"),
        ({"status": "deleted_by_customer"}, "status"),  # the API says churned
        ({"added_since": "2026-11-29T05:30:00"}, "added_since"),  # no time zone
        ({"limit": 501}, "limit"),
    ],
)
async def test_refused_filters(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    wecom_app: RegisteredApp,
    params: dict[str, Any],
    field: str,
) -> None:
    body = problem(await client.get(URL, params=params, headers=headers), 422, "validation_failed")
    assert [e["field"] for e in body["errors"]] == [field]


@pytest.mark.usefixtures("customers")
async def test_unknown_customer(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    problem(await client.get(f"{URL}/wmNope", headers=headers), 404, "customer_not_found")
    # wmB exists, but not in the other corp
    problem(
        await client.get(f"{URL}/wmB", params={"app": "other"}, headers=headers),
        404,
        "customer_not_found",
    )


@pytest.mark.usefixtures("customers")
async def test_an_id_known_to_two_corps(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    wecom_app: RegisteredApp,
    other_app: RegisteredApp,
) -> None:
    first = (await client.get(f"{URL}/wmA", headers=headers)).json()
    assert (first["corp_id"], first["name"]) == (wecom_app.corp_id, "Alice Li")  # seen first
    chosen = (await client.get(f"{URL}/wmA", params={"app": "other"}, headers=headers)).json()
    assert (chosen["corp_id"], chosen["name"]) == (other_app.corp_id, "Alice Other")
    assert [f["userid"] for f in chosen["follows"]] == ["wangwu"]


async def test_why_no_welcome_is_one_call(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    await deliver(
        client,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id="zhangsan",
            external_user_id="wmA",
            state="spring_promo",
            welcome_code="W1",
            create_time=T0,
        ),
    )
    joined: dict[str, str | list[str]] = {
        "UpdateDetail": "add_member",
        "JoinScene": "3",
        "MemChangeList": ["wmA"],
    }
    for change, fields in [("create", {}), ("update", joined)]:
        await deliver(
            client,
            wecom_app,
            event_xml(
                wecom_app.corp_id,
                "change_external_chat",
                {"ChatId": "wrC1", "ChangeType": change, **fields},
                create_time=T0 + 5,
            ),
        )
    await drain(processor)
    await db.execute("UPDATE customer_groups SET name = 'Spring sale'")
    await db.execute("UPDATE follows SET tag_ids = '{etVIP,etGONE}'")
    await db.execute(
        "INSERT INTO tags (corp_id, tag_id, name) VALUES ($1, 'etVIP', 'VIP')", wecom_app.corp_id
    )
    await db.execute(
        "UPDATE actions SET status = 'failed', error_code = 'wecom.84061',"
        " error_message = 'not external contact' WHERE kind = 'enrich_contact'"
    )

    response = await client.get(f"{URL}/wmA", headers=headers)
    assert response.status_code == 200, response.text
    detail = response.json()
    [follow] = detail["follows"]
    assert (follow["userid"], follow["status"], follow["state"]) == (
        "zhangsan",
        "active",
        "spring_promo",
    )
    assert follow["tags"] == [
        {"tag_id": "etVIP", "name": "VIP"},
        {"tag_id": "etGONE", "name": None},
    ]
    [group] = detail["groups"]
    assert (group["chat_id"], group["name"], group["join_scene"], group["quit_at"]) == (
        "wrC1",
        "Spring sale",
        3,
        None,
    )

    timeline = detail["timeline"]
    assert [(e["kind"], e["type"], e["status"]) for e in timeline] == [
        ("action", "welcome", "skipped"),
        ("action", "enrich_contact", "failed"),
        ("event", "add_external_contact", "processed"),
    ]  # the group's events carry no ExternalUserID: they are the group's, not the customer's
    welcome, enrich, event = timeline
    assert welcome["reason"] == "no enabled welcome rule matches state 'spring_promo'"
    assert (enrich["error_code"], enrich["error_message"]) == (
        "wecom.84061",
        "not external contact",
    )
    assert event["summary"] == "member zhangsan, channel state spring_promo"
    assert event["reason"] is None
    assert [datetime.fromisoformat(e["at"]) for e in timeline] == sorted(
        (datetime.fromisoformat(e["at"]) for e in timeline), reverse=True
    )
