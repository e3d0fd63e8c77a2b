"""/api/v1/stats: callbacks built as WeCom sends them, delivered over HTTP and processed for
real, then every answer checked against a count of the stored events written here in plain
SQL (not the counters the processor keeps), for every group_by."""

import importlib.util
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.apikeys import Scope
from app.config import Settings
from app.processing.processor import EventProcessor
from app.simulator.callbacks import add_external_contact, event_xml
from tests.api_helpers import auth, key_header, problem
from tests.conftest import RegisteredApp, Simulator, random_app, register
from tests.processing_helpers import deliver, drain, sessionmaker_for, wait_for
from tests.test_automations import new_customer, rule

SHANGHAI = ZoneInfo("Asia/Shanghai")
# The window: Shanghai's 2 March to 20 March 2025. M is a Shanghai midnight (16:00 UTC), U
# the UTC midnight 8 hours later: events half an hour either side of each.
SINCE = datetime(2025, 3, 1, 16, tzinfo=UTC)
UNTIL = datetime(2025, 3, 20, 16, tzinfo=UTC)
M = datetime(2025, 3, 10, 16, tzinfo=UTC)
U = M + timedelta(hours=8)
HALF_HOUR = timedelta(minutes=30)
WINDOW = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}

MIGRATION = Path(__file__).parent.parent / "migrations/versions/2026-11-29-0700_stats.py"


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    maker = sessionmaker_for(settings)
    yield maker
    await maker.kw["bind"].dispose()


@pytest.fixture
def processor(sessionmaker: async_sessionmaker[AsyncSession]) -> EventProcessor:
    return EventProcessor(sessionmaker, worker="test-processor")


def unix(at: datetime) -> int:
    return int(at.timestamp())


def added(app: RegisteredApp, userid: str, customer: str, state: str, at: datetime) -> str:
    return add_external_contact(
        corp_id=app.corp_id,
        user_id=userid,
        external_user_id=customer,
        state=state,
        create_time=unix(at),
    )


def contact(
    app: RegisteredApp, change: str, userid: str, customer: str, at: datetime, **extra: str
) -> str:
    fields = {"ChangeType": change, "UserID": userid, "ExternalUserID": customer, **extra}
    return event_xml(app.corp_id, "change_external_contact", fields, create_time=unix(at))


def group_change(
    app: RegisteredApp, chat_id: str, detail: str, scene: int, members: list[str], at: datetime
) -> str:
    """As the simulator's join-group and leave-group scenarios build them."""
    fields: dict[str, str | list[str]] = {
        "ChatId": chat_id,
        "ChangeType": "update",
        "UpdateDetail": detail,
        "JoinScene" if detail == "add_member" else "QuitScene": str(scene),
        "MemChangeCnt": str(len(members)),
        "MemChangeList": members,
    }
    return event_xml(app.corp_id, "change_external_chat", fields, create_time=unix(at))


def customer_story(app: RegisteredApp) -> list[str]:
    """Adds, churns (within 7 days of the add and after), deletions by the member (one by a
    transfer), a half add, a re-add under another channel, events outside the window."""
    return [
        added(app, "zhangsan", "wmOld", "expo", SINCE - timedelta(days=3)),  # before the window
        contact(app, "del_follow_user", "zhangsan", "wmOld", SINCE + timedelta(days=2)),
        added(app, "zhangsan", "wmA", "store_sh", M - HALF_HOUR),  # Shanghai 10 March 23:30
        added(app, "lisi", "wmB", "store_sh", M + HALF_HOUR),  # Shanghai 11 March 00:30
        added(app, "lisi", "wmB", "store_sh", M + HALF_HOUR),  # WeCom's retry: one event
        contact(
            app, "add_half_external_contact", "zhangsan", "wmC", M + 2 * HALF_HOUR, State="expo"
        ),
        contact(app, "del_follow_user", "zhangsan", "wmC", M + 4 * HALF_HOUR),
        contact(app, "del_follow_user", "zhangsan", "wmA", M - HALF_HOUR + timedelta(days=8)),
        added(app, "lisi", "wmD", "", U - HALF_HOUR),  # UTC 10 March, Shanghai 11 March
        added(app, "zhangsan", "wmE", "", U + HALF_HOUR),  # UTC 11 March, Shanghai 11 March
        contact(app, "del_external_contact", "lisi", "wmD", U + timedelta(days=1)),
        contact(
            app,
            "del_external_contact",
            "lisi",
            "wmB",
            U + timedelta(days=2),
            Source="DELETE_BY_TRANSFER",
        ),
        contact(app, "del_follow_user", "lisi", "wmZ", U + timedelta(days=3)),  # never added
        added(app, "zhangsan", "wmA", "spring", M + timedelta(days=9)),  # back, by another channel
        contact(app, "del_follow_user", "zhangsan", "wmA", M + timedelta(days=9, hours=5)),
        added(app, "zhangsan", "wmLate", "expo", UNTIL),  # after the window
    ]


def group_story(app: RegisteredApp) -> list[str]:
    return [
        group_change(app, "wrG1", "add_member", 3, ["wmA", "wmB"], M - HALF_HOUR),
        group_change(app, "wrG1", "add_member", 0, ["wmC"], M + HALF_HOUR),
        group_change(app, "wrG1", "add_member", 0, ["wmC"], M + HALF_HOUR),  # a retry
        group_change(app, "wrG1", "del_member", 0, ["wmA"], U + HALF_HOUR),
        group_change(app, "wrG2", "del_member", 1, ["wmB"], U - HALF_HOUR),
        group_change(app, "wrG2", "add_member", 3, ["wmD"], SINCE - timedelta(hours=1)),
        event_xml(app.corp_id, "change_external_chat", {"ChatId": "wrG2", "ChangeType": "create"}),
    ]


@pytest.fixture
async def other_corp(settings: Settings, db: asyncpg.Connection) -> RegisteredApp:
    app = random_app("other")
    await register(settings, app)
    return app


@pytest.fixture
async def stories(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    other_corp: RegisteredApp,
    processor: EventProcessor,
) -> None:
    """Both stories in the app's corp, and a little of each in another corp."""
    for message in [*customer_story(wecom_app), *group_story(wecom_app)]:
        await deliver(client, wecom_app, message)
    for message in [
        added(other_corp, "wangwu", "wmOther", "store_sh", M + HALF_HOUR),
        group_change(other_corp, "wrOther", "add_member", 3, ["wmOther"], M + HALF_HOUR),
    ]:
        await deliver(client, other_corp, message)
    await drain(processor)


# The independent counts: straight from the events, each deletion joined to the latest add
# of the same corp, member and customer at or before it.
CUSTOMERS_BY_HAND = """
WITH contact AS (
    SELECT e.type, e.create_time AS at, a.corp_id, e.payload ->> 'UserID' AS userid,
           e.payload ->> 'ExternalUserID' AS customer,
           coalesce(e.payload ->> 'State', '') AS state, e.payload ->> 'Source' AS source
    FROM events e JOIN apps a ON a.id = e.app_id
    WHERE e.family = 'change_external_contact' AND ($3::text IS NULL OR a.corp_id = $3)
), counted AS (
    SELECT c.type, c.at, c.userid,
           CASE WHEN c.type = 'add_external_contact' THEN c.state
                ELSE coalesce(brought.state, '') END AS state,
           c.type = 'del_follow_user' AND c.at < brought.at + interval '7 days' AS early
    FROM contact c
    LEFT JOIN LATERAL (
        SELECT b.state, b.at FROM contact b
        WHERE b.type IN ('add_external_contact', 'add_half_external_contact')
          AND (b.corp_id, b.userid, b.customer) = (c.corp_id, c.userid, c.customer)
          AND b.at <= c.at
        ORDER BY b.at DESC LIMIT 1
    ) AS brought ON true
    WHERE c.at >= $1 AND c.at < $2
      AND (c.type IN ('add_external_contact', 'del_follow_user')
           OR (c.type = 'del_external_contact'
               AND c.source IS DISTINCT FROM 'DELETE_BY_TRANSFER'))
)
SELECT {key} AS key,
       count(*) FILTER (WHERE type = 'add_external_contact') AS added,
       count(*) FILTER (WHERE type = 'del_follow_user') AS churned,
       count(*) FILTER (WHERE type = 'del_external_contact') AS deleted_by_member,
       count(*) FILTER (WHERE early) AS churned_7d
FROM counted GROUP BY 1
"""

GROUPS_BY_HAND = """
SELECT {key} AS key,
       CASE e.payload ->> 'UpdateDetail' WHEN 'add_member' THEN 'joins' ELSE 'quits' END
           AS change,
       coalesce(e.payload ->> 'JoinScene', e.payload ->> 'QuitScene') AS scene,
       sum((e.payload ->> 'MemChangeCnt')::int) AS members
FROM events e JOIN apps a ON a.id = e.app_id
WHERE e.type = 'update' AND e.payload ->> 'UpdateDetail' IN ('add_member', 'del_member')
  AND e.create_time >= $1 AND e.create_time < $2 AND ($3::text IS NULL OR a.corp_id = $3)
GROUP BY 1, 2, 3
"""

LOCAL_DAY = "to_char(e.create_time AT TIME ZONE $4, 'YYYY-MM-DD')"


def days_between(since: datetime, until: datetime, tz: ZoneInfo) -> list[str]:
    first = since.astimezone(tz).date()
    last = (until - timedelta(seconds=1)).astimezone(tz).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


async def customers_by_hand(
    db: asyncpg.Connection, group_by: str, corp_id: str | None, tz: str = "Asia/Shanghai"
) -> dict[str, dict[str, int]]:
    key = "to_char(at AT TIME ZONE $4, 'YYYY-MM-DD')" if group_by == "day" else group_by
    days = [tz] if group_by == "day" else []
    rows = await db.fetch(CUSTOMERS_BY_HAND.format(key=key), SINCE, UNTIL, corp_id, *days)
    counted = {}
    for row in rows:
        counts = {name: row[name] for name in ("added", "churned", "deleted_by_member")}
        net = counts["added"] - counts["churned"] - counts["deleted_by_member"]
        counted[row["key"]] = {**counts, "net": net, "churned_7d": row["churned_7d"]}
    return counted


async def groups_by_hand(
    db: asyncpg.Connection, group_by: str, corp_id: str | None, tz: str = "Asia/Shanghai"
) -> dict[str, dict[str, Any]]:
    key = LOCAL_DAY if group_by == "day" else "e.payload ->> 'ChatId'"
    days = [tz] if group_by == "day" else []
    rows = await db.fetch(GROUPS_BY_HAND.format(key=key), SINCE, UNTIL, corp_id, *days)
    counted: dict[str, dict[str, Any]] = {}
    for row in rows:
        found = counted.setdefault(
            row["key"], {"joins": 0, "quits": 0, "joins_by_scene": {}, "quits_by_scene": {}}
        )
        found[row["change"]] += row["members"]
        found[f"{row['change']}_by_scene"][row["scene"]] = row["members"]
    return counted


def without_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["key"]: {k: v for k, v in row.items() if k != "key"} for row in rows}


@pytest.mark.usefixtures("stories")
@pytest.mark.parametrize("group_by", ["day", "state", "userid"])
@pytest.mark.parametrize("scoped", [True, False])
async def test_customer_stats_match_a_count_by_hand(
    client: httpx.AsyncClient,
    hub: FastAPI,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    group_by: str,
    scoped: bool,
) -> None:
    params = {**WINDOW, "group_by": group_by, **({"app": wecom_app.slug} if scoped else {})}
    answer = await client.get(
        "/api/v1/stats/customers", params=params, headers=await auth(hub, Scope.READ)
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["since"], body["until"], body["tz"]) == (
        "2025-03-01T16:00:00Z",
        "2025-03-20T16:00:00Z",
        "Asia/Shanghai",
    )
    expected = await customers_by_hand(db, group_by, wecom_app.corp_id if scoped else None)
    got = without_key(body["data"])
    if group_by == "day":
        # Every day of the window, in order; the days nothing happened on are zeros.
        assert list(got) == days_between(SINCE, UNTIL, SHANGHAI)
        got = {day: counts for day, counts in got.items() if any(counts.values())}
    assert got == expected
    assert len(expected) >= 2


@pytest.mark.usefixtures("stories")
async def test_customer_stats_count_what_the_docs_say(
    client: httpx.AsyncClient, hub: FastAPI, wecom_app: RegisteredApp
) -> None:
    """The rules spelled out, on the story: a churn counts under the channel of the add
    that brought the customer (a half add too, and the latest add when they came back);
    churned_7d within 7 days of it; a transfer and a half add are not counted; days are
    Shanghai's, across UTC midnight."""
    headers = await auth(hub, Scope.READ)
    params = {**WINDOW, "app": wecom_app.slug}

    async def stats(group_by: str) -> dict[str, dict[str, Any]]:
        answer = await client.get(
            "/api/v1/stats/customers", params={**params, "group_by": group_by}, headers=headers
        )
        return without_key(answer.json()["data"])

    def row(added: int, churned: int, deleted: int, early: int) -> dict[str, int]:
        return {
            "added": added,
            "churned": churned,
            "deleted_by_member": deleted,
            "net": added - churned - deleted,
            "churned_7d": early,
        }

    assert await stats("state") == {
        "": row(2, 1, 1, 0),  # wmD and wmE; wmZ, added before wecom-hub; wmD
        "expo": row(0, 2, 0, 2),  # wmOld (added before the window) and wmC (a half add)
        "spring": row(1, 1, 0, 1),  # wmA came back by another channel, and left again
        "store_sh": row(2, 1, 0, 0),  # wmA and wmB; wmA left after 8 days
    }
    by_day = await stats("day")
    assert by_day["2025-03-10"] == row(1, 0, 0, 0)  # wmA at 23:30
    assert by_day["2025-03-11"] == row(3, 1, 0, 1)  # wmB 00:30, wmD 07:30, wmE 08:30; wmC


@pytest.mark.usefixtures("stories")
@pytest.mark.parametrize("group_by", ["day", "chat_id"])
@pytest.mark.parametrize("scoped", [True, False])
async def test_group_stats_match_a_count_by_hand(
    client: httpx.AsyncClient,
    hub: FastAPI,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    group_by: str,
    scoped: bool,
) -> None:
    params = {**WINDOW, "group_by": group_by, **({"app": wecom_app.slug} if scoped else {})}
    answer = await client.get(
        "/api/v1/stats/groups", params=params, headers=await auth(hub, Scope.READ)
    )
    assert answer.status_code == 200, answer.text
    expected = await groups_by_hand(db, group_by, wecom_app.corp_id if scoped else None)
    got = without_key(answer.json()["data"])
    if group_by == "day":
        assert list(got) == days_between(SINCE, UNTIL, SHANGHAI)
        got = {day: counts for day, counts in got.items() if counts["joins"] or counts["quits"]}
    assert got == expected
    assert len(expected) >= 2
    if scoped and group_by == "chat_id":
        assert got["wrG1"] == {
            "joins": 3,
            "quits": 1,
            "joins_by_scene": {"0": 1, "3": 2},
            "quits_by_scene": {"0": 1},
        }


@pytest.mark.usefixtures("stories")
async def test_days_follow_the_time_zone_asked_for(
    client: httpx.AsyncClient, hub: FastAPI, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    headers = await auth(hub, Scope.READ)
    params = {**WINDOW, "app": wecom_app.slug, "tz": "UTC"}
    for path, by_hand in [("customers", customers_by_hand), ("groups", groups_by_hand)]:
        answer = await client.get(f"/api/v1/stats/{path}", params=params, headers=headers)
        got = without_key(answer.json()["data"])
        assert list(got) == days_between(SINCE, UNTIL, ZoneInfo("UTC"))
        expected = await by_hand(db, "day", wecom_app.corp_id, "UTC")
        assert {day: counts for day, counts in got.items() if day in expected} == expected
    # M ± 30 min are one UTC day; U ± 30 min are two.
    customers = await client.get("/api/v1/stats/customers", params=params, headers=headers)
    assert without_key(customers.json()["data"])["2025-03-10"]["added"] == 3


@pytest.mark.usefixtures("stories")
async def test_the_migration_counts_the_history_as_the_processor_does(
    db: asyncpg.Connection,
) -> None:
    """What migration 0010 counts from the events processed before it equals what the
    processor counted, row for row."""
    spec = importlib.util.spec_from_file_location("stats_migration", MIGRATION)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    for table, count in [
        ("customer_stats", migration.COUNT_CUSTOMERS),
        ("group_stats", migration.COUNT_GROUPS),
    ]:
        query = f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5"  # noqa: S608 - our tables
        projected = [tuple(row) for row in await db.fetch(query)]
        await db.execute(f"DELETE FROM {table}")  # noqa: S608 - our tables
        await db.execute(count)
        assert [tuple(row) for row in await db.fetch(query)] == projected
        assert len(projected) >= 5


WELCOME_BY_HAND = """
SELECT to_char(a.created_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD') AS day, a.status,
       coalesce(a.reason, a.error_code, '') AS reason, count(*) AS n,
       floor(max(extract(epoch FROM a.finished_at - e.create_time)) * 1000) AS latency
FROM actions a JOIN events e ON e.id = a.event_id
WHERE a.kind = 'welcome'
GROUP BY 1, 2, 3
"""


async def test_welcome_stats_match_a_count_by_hand(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """One welcome sent, one skipped (no rule for its channel), one expired (its event
    arrived after the welcome code's 20 s)."""
    await rule(settings, "welcome", {"state": "store_sh"}, {"text": "欢迎光临"})
    await new_customer(live, wecom_app, simulator, state="store_sh")
    await new_customer(live, wecom_app, simulator, state="elsewhere")
    late = datetime.now(UTC) - timedelta(minutes=1)
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id="zhangsan",
            external_user_id="wmLATE",
            state="store_sh",
            welcome_code="CODE_FROM_A_MINUTE_AGO",
            create_time=unix(late),
        ),
    )

    async def all_ended() -> bool:
        statuses = await db.fetch("SELECT status FROM actions WHERE kind = 'welcome'")
        return len(statuses) == 3 and all(
            row["status"] in ("succeeded", "skipped", "expired") for row in statuses
        )

    await wait_for(all_ended)
    headers = await key_header(settings, Scope.READ)
    answer = await live.get("/api/v1/stats/welcome", params={"app": "demo"}, headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    since, until = datetime.fromisoformat(body["since"]), datetime.fromisoformat(body["until"])
    assert until - since == timedelta(days=30)
    assert until - timedelta(hours=1) <= datetime.now(UTC) < until
    assert [day["key"] for day in body["data"]] == days_between(since, until, SHANGHAI)

    outcome = {"succeeded": "sent", "skipped": "skipped", "expired": "expired"}
    expected: dict[str, dict[str, Any]] = {}
    for row in await db.fetch(WELCOME_BY_HAND):
        day = expected.setdefault(row["day"], {"reasons": {}, "latency_ms": None})
        name = outcome[row["status"]]
        day[name] = day.get(name, 0) + row["n"]
        day["reasons"].setdefault(name, []).append({"reason": row["reason"], "count": row["n"]})
        if row["status"] == "succeeded":
            latency = int(row["latency"])
            day["latency_ms"] = {"p50": latency, "p95": latency, "max": latency}
    got = {
        day["key"]: {
            **{name: n for name in ("sent", "skipped", "expired", "failed") if (n := day[name])},
            "reasons": {name: found for name, found in day["reasons"].items() if found},
            "latency_ms": day["latency_ms"],
        }
        for day in body["data"]
        if day["key"] in expected
    }
    assert got == expected
    assert sum(day.get("sent", 0) + day.get("skipped", 0) for day in got.values()) == 2
    reasons = [
        reason for day in got.values() for found in day["reasons"].values() for reason in found
    ]
    assert {"reason": "no enabled welcome rule matches state 'elsewhere'", "count": 1} in reasons
    assert {"reason": "deadline passed before the call", "count": 1} in reasons
    quiet = [day for day in body["data"] if day["key"] not in expected]
    assert all(day["sent"] == 0 and day["latency_ms"] is None for day in quiet)


REFUSED = [
    ({"tz": "Mars/Olympus_Mons"}, "tz"),
    ({"tz": "localtime"}, "tz"),  # whatever the server is set to
    ({"since": "2025-03-01T16:30:00Z"}, "since"),
    ({"until": "2025-03-01T16:00:00.5Z"}, "until"),
    ({"since": "2025-03-02T00:00:00Z", "until": "2025-03-01T00:00:00Z"}, "since"),
    ({"since": "2024-01-01T00:00:00Z", "until": "2025-01-02T00:00:00Z"}, "until"),  # 367 days
    ({"since": "1969-12-31T00:00:00Z"}, "since"),
    ({"app": "nosuchapp"}, "app"),
]
# Counted per UTC hour, customers and groups cannot be grouped by days that start at :30.
OFF_THE_HOUR = ({"tz": "Asia/Kolkata", "group_by": "day"}, "tz")


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        *((path, *case) for path in ("customers", "groups", "welcome") for case in REFUSED),
        *((path, *OFF_THE_HOUR) for path in ("customers", "groups")),
    ],
)
async def test_a_window_that_cannot_be_counted_is_refused(
    client: httpx.AsyncClient, hub: FastAPI, path: str, params: dict[str, str], field: str
) -> None:
    answer = await client.get(
        f"/api/v1/stats/{path}", params=params, headers=await auth(hub, Scope.READ)
    )
    body = problem(answer, 422, "validation_failed")
    assert [error["field"] for error in body["errors"]] == [field]


async def test_a_zone_whose_days_start_off_the_hour_still_counts_by_state(
    client: httpx.AsyncClient, hub: FastAPI
) -> None:
    """…and welcomes by day: they are counted from the actions, at any instant."""
    headers = await auth(hub, Scope.READ)
    for path, params in [
        ("customers", {"group_by": "state"}),
        ("groups", {"group_by": "chat_id"}),
        ("welcome", {}),
    ]:
        answer = await client.get(
            f"/api/v1/stats/{path}", params={**params, "tz": "Asia/Kolkata"}, headers=headers
        )
        assert answer.status_code == 200, answer.text
    welcome = await client.get(
        "/api/v1/stats/welcome", params={"tz": "Asia/Kolkata"}, headers=headers
    )
    assert len(welcome.json()["data"]) == 31


async def test_stats_need_a_key(client: httpx.AsyncClient) -> None:
    problem(await client.get("/api/v1/stats/customers"), 401, "missing_api_key")


async def test_a_leap_year_fits_in_one_window(client: httpx.AsyncClient, hub: FastAPI) -> None:
    """366 days: the longest window (a day more is refused, above). An offset that is not
    whole hours is fine where the instant is on a UTC hour."""
    answer = await client.get(
        "/api/v1/stats/customers",
        params={"since": "2024-01-01T05:30:00+05:30", "until": "2025-01-01T00:00:00Z", "tz": "UTC"},
        headers=await auth(hub, Scope.READ),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["since"] == "2024-01-01T00:00:00Z"
    assert len(answer.json()["data"]) == 366
