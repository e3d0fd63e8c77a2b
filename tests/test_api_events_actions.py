"""/api/v1/events and /api/v1/actions: the event log and the side effects, read, retried and
cancelled over HTTP, with wecom-hub processing for real and WeCom played by the simulator."""

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from app.apikeys import Scope
from app.config import Settings
from app.simulator.callbacks import add_external_contact, event_xml
from app.simulator.state import Contact, Fault
from tests.api_helpers import auth, key_header, problem
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, wait_for
from tests.test_automations import new_customer


async def status_of(client: httpx.AsyncClient, headers: dict[str, str], action_id: int) -> str:
    answer = await client.get(f"/api/v1/actions/{action_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["status"])


async def test_why_did_this_customer_get_no_welcome_is_one_call(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
) -> None:
    """No welcome rule for the channel: the welcome action says so, found by customer."""
    headers = await key_header(settings, Scope.READ)
    customer = await new_customer(live, wecom_app, simulator, state="expo_2026")

    async def recorded() -> bool:
        answer = await live.get(
            "/api/v1/actions",
            params={"external_userid": customer, "kind": "welcome"},
            headers=headers,
        )
        return bool(answer.json()["data"])

    await wait_for(recorded)
    answer = await live.get(
        "/api/v1/actions", params={"external_userid": customer, "kind": "welcome"}, headers=headers
    )
    [welcome] = answer.json()["data"]
    assert (welcome["status"], welcome["app"], welcome["target"]) == ("skipped", "demo", customer)
    assert welcome["reason"] == "no enabled welcome rule matches state 'expo_2026'"

    # …and the event that caused it, with everything it caused.
    events = await live.get("/api/v1/events", params={"external_userid": customer}, headers=headers)
    [event] = events.json()["data"]
    assert (event["type"], event["status"], event["external_userid"]) == (
        "add_external_contact",
        "processed",
        customer,
    )
    detail = (await live.get(f"/api/v1/events/{event['id']}", headers=headers)).json()
    assert detail["fields"]["State"] == "expo_2026"
    assert {a["kind"] for a in detail["actions"]} >= {"welcome", "enrich_contact"}
    assert welcome["id"] in {a["id"] for a in detail["actions"]}


async def test_a_failed_action_is_retried_over_the_api_and_every_attempt_is_listed(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    headers = await key_header(settings, Scope.WRITE)
    simulator.state.corp(wecom_app.corp_id).contacts["wmRETRY"] = Contact("wmRETRY", "钱七")
    # A permanent error, once: the action fails for good; the operator fixes the cause.
    simulator.state.faults = [Fault(api="externalcontact/get", errcode=48002, times=1)]
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id="wmRETRY"
        ),
    )
    action_id = 0

    async def failed() -> bool:
        nonlocal action_id
        answer = await live.get(
            "/api/v1/actions",
            params={"kind": "enrich_contact", "status": "failed"},
            headers=headers,
        )
        found = answer.json()["data"]
        action_id = found[0]["id"] if found else 0
        return bool(found)

    await wait_for(failed)
    before = (await live.get(f"/api/v1/actions/{action_id}", headers=headers)).json()
    assert before["error"]["code"] == "wecom.48002"
    assert [a["outcome"] for a in before["attempts_log"]] == ["failed"]

    retried = await live.post(f"/api/v1/actions/{action_id}/retry", headers=headers)
    assert retried.status_code == 200, retried.text
    assert retried.json()["reason"].startswith("retried by API key")

    async def succeeded() -> bool:
        return await status_of(live, headers, action_id) == "succeeded"

    await wait_for(succeeded)
    after = (await live.get(f"/api/v1/actions/{action_id}", headers=headers)).json()
    assert [a["outcome"] for a in after["attempts_log"]] == ["failed", "succeeded"]
    assert await db.fetchval("SELECT name FROM external_contacts") == "钱七"
    # Succeeded now: nothing left to retry.
    problem(
        await live.post(f"/api/v1/actions/{action_id}/retry", headers=headers),
        409,
        "action_not_retryable",
    )


async def insert_action(db: asyncpg.Connection, app: RegisteredApp, **values: Any) -> int:
    row = {
        "kind": "welcome",
        "target": "wmX",
        "status": "pending",
        "deadline": None,
        "next_attempt_at": datetime.now(UTC) + timedelta(hours=1),
        "locked_until": None,
        **values,
    }
    action_id: int = await db.fetchval(
        "INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key, status, deadline,"
        " next_attempt_at, locked_by, locked_until)"
        " SELECT $1, id, corp_id, $2, gen_random_uuid()::text, $3, $4, $5,"
        "        CASE WHEN $6::timestamptz IS NOT NULL THEN 'a runner' END, $6"
        " FROM apps WHERE slug = $7 RETURNING id",
        row["kind"],
        row["target"],
        row["status"],
        row["deadline"],
        row["next_attempt_at"],
        row["locked_until"],
        app.slug,
    )
    return action_id


async def test_retry_and_cancel_say_why_they_cannot(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    headers = await auth(hub, Scope.WRITE)
    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = await insert_action(db, wecom_app, status="expired", deadline=past)
    body = problem(
        await client.post(f"/api/v1/actions/{expired}/retry", headers=headers),
        409,
        "deadline_passed",
    )
    assert "welcome code expired" in body["detail"]

    waiting = await insert_action(db, wecom_app, kind="mark_tag")
    cancelled = await client.post(f"/api/v1/actions/{waiting}/cancel", headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["finished_at"] is not None) == (
        "cancelled",
        True,
    )
    problem(
        await client.post(f"/api/v1/actions/{waiting}/cancel", headers=headers),
        409,
        "action_not_cancellable",
    )
    # Claimed by a runner: stored as pending with its lease, shown and refused as running.
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    running = await insert_action(db, wecom_app, kind="mark_tag", locked_until=in_an_hour)

    async def listed(status: str) -> list[int]:
        page = await client.get(
            "/api/v1/actions", params={"kind": "mark_tag", "status": status}, headers=headers
        )
        assert page.status_code == 200, page.text
        return [action["id"] for action in page.json()["data"]]

    async def shown() -> str:
        found = await client.get(f"/api/v1/actions/{running}", headers=headers)
        return str(found.json()["status"])

    async def refused() -> str:
        body = problem(
            await client.post(f"/api/v1/actions/{running}/cancel", headers=headers),
            409,
            "action_not_cancellable",
        )
        return str(body["detail"])

    assert (await shown(), await listed("running"), await listed("pending")) == (
        "running",
        [running],
        [],
    )
    assert "is running" in await refused()
    # Its runner died and the lease ran out: still running until another runner takes it
    # over (its call may have reached WeCom), as the stored status said before migration 0018.
    await db.execute(
        "UPDATE actions SET locked_until = now() - interval '1 s' WHERE id = $1", running
    )
    assert (await shown(), await listed("running")) == ("running", [running])
    assert "is running" in await refused()
    # Given back (a runner that stopped): waiting, and cancellable.
    await db.execute(
        "UPDATE actions SET locked_by = NULL, locked_until = NULL WHERE id = $1", running
    )
    assert (await shown(), await listed("running"), await listed("pending")) == (
        "pending",
        [],
        [running],
    )
    problem(
        await client.post("/api/v1/actions/999999/retry", headers=headers), 404, "action_not_found"
    )
    read_only = await auth(hub, Scope.READ)
    problem(
        await client.post(f"/api/v1/actions/{waiting}/retry", headers=read_only),
        403,
        "insufficient_scope",
    )
    # A cancelled action can be asked for again.
    again = await client.post(f"/api/v1/actions/{waiting}/retry", headers=headers)
    assert again.json()["status"] == "pending"


async def test_event_pages_stay_stable_while_events_arrive(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    headers = await auth(hub, Scope.READ)

    async def arrive(n: int, start: int) -> None:
        for i in range(start, start + n):
            await deliver(
                client,
                wecom_app,
                event_xml(wecom_app.corp_id, "click", {"EventKey": f"k{i}"}),
            )

    await arrive(5, 0)
    seen: list[int] = []
    answer = (await client.get("/api/v1/events", params={"limit": 2}, headers=headers)).json()
    seen += [e["id"] for e in answer["data"]]
    await arrive(3, 100)  # newer than every page still to come
    while answer["next_cursor"]:
        answer = (
            await client.get(
                "/api/v1/events",
                params={"limit": 2, "cursor": answer["next_cursor"]},
                headers=headers,
            )
        ).json()
        seen += [e["id"] for e in answer["data"]]
    assert len(seen) == len(set(seen)) == 5
    assert seen == sorted(seen, reverse=True)

    newest = (await client.get("/api/v1/events", headers=headers)).json()["data"]
    assert len(newest) == 8
    problem(
        await client.get(
            "/api/v1/events",
            params={"limit": 2, "type": "click", "cursor": answer["next_cursor"] or "x"},
            headers=headers,
        ),
        400,
        "invalid_cursor",
    )


async def test_event_filters(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    headers = await auth(hub, Scope.READ)
    await deliver(
        client,
        wecom_app,
        add_external_contact(corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id="wmF"),
    )
    await deliver(client, wecom_app, event_xml(wecom_app.corp_id, "click", {"EventKey": "menu"}))

    async def types(**params: str) -> list[str]:
        answer = await client.get("/api/v1/events", params=params, headers=headers)
        assert answer.status_code == 200, answer.text
        return [e["type"] for e in answer.json()["data"]]

    assert await types() == ["click", "add_external_contact"]
    assert await types(external_userid="wmF") == ["add_external_contact"]
    assert await types(family="change_external_contact") == ["add_external_contact"]
    assert await types(type="click") == ["click"]
    assert await types(status="pending") == ["click", "add_external_contact"]
    assert await types(status="processed") == []
    assert await types(app="demo", since=datetime.now(UTC).isoformat()) == []
    assert await types(until=datetime.now(UTC).isoformat()) == ["click", "add_external_contact"]
    body = problem(
        await client.get("/api/v1/events", params={"app": "nope"}, headers=headers),
        422,
        "validation_failed",
    )
    assert body["errors"] == [{"field": "app", "message": "no app 'nope'"}]
    problem(await client.get("/api/v1/events/424242", headers=headers), 404, "event_not_found")
    problem(await client.get("/api/v1/events"), 401, "missing_api_key")


async def test_values_postgres_cannot_take_are_a_400_not_a_500(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    headers = await auth(hub, Scope.READ)
    for url in ("/api/v1/events?type=a%00b", "/api/v1/customers/wm%00x"):  # NUL
        problem(await client.get(url, headers=headers), 400, "invalid_parameter")
    beyond_bigint = await client.get("/api/v1/events/9223372036854775808", headers=headers)
    assert problem(beyond_bigint, 422, "validation_failed")["errors"][0]["field"] == "event_id"


async def test_until_and_since_cut_by_received_time(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """`until` starts the scan from the first event a minute past it (ids grow with time):
    the answer must be exactly the events received before it."""
    headers = await auth(hub, Scope.READ)
    for i in range(5):
        await deliver(
            client, wecom_app, event_xml(wecom_app.corp_id, "click", {"EventKey": f"{i}"})
        )
    now = datetime.now(UTC)
    # received 4 h, 3 h, 2 h, 30 s and 0 s ago, in id order
    for event_id, ago in zip(
        await db.fetchval("SELECT array_agg(id ORDER BY id) FROM events"),
        (14400, 10800, 7200, 30, 0),
        strict=True,
    ):
        await db.execute(
            "UPDATE events SET received_at = $2 WHERE id = $1",
            event_id,
            now - timedelta(seconds=ago),
        )

    async def keys(**params: str) -> list[str]:
        answer = await client.get("/api/v1/events", params=params, headers=headers)
        return [str(e["id"]) for e in answer.json()["data"]]

    ids = [str(i) for i in await db.fetchval("SELECT array_agg(id ORDER BY id DESC) FROM events")]
    assert await keys(until=(now - timedelta(hours=2, minutes=30)).isoformat()) == ids[3:]
    assert await keys(until=(now - timedelta(seconds=10)).isoformat()) == ids[1:]
    assert await keys(until=(now - timedelta(seconds=40)).isoformat()) == ids[2:]
    window = {
        "since": (now - timedelta(hours=3)).isoformat(),
        "until": (now - timedelta(minutes=1)).isoformat(),
    }
    assert await keys(**window) == ids[2:4]
