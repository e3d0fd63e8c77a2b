"""An attempt is one pass of the action runner; `wecom_calls` says how many HTTP requests it
sent to WeCom, the WeCom client's retries within the pass and a gettoken it had to make
included, and the action's `wecom_calls` sums them over its attempts log. Each count is
checked against the simulator's own record of the requests it answered."""

import asyncio
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from app.config import Settings
from app.processing.processor import EventProcessor
from app.simulator.callbacks import add_external_contact
from app.simulator.state import Contact, Fault
from app.wecom.calls import CallCount, counting, sent
from tests.api_helpers import auth
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, drain, row, sessionmaker_for, wait_for
from tests.test_automations import Replica, replica, rule

WELCOME = "externalcontact/send_welcome_msg"
GET_CONTACT = "externalcontact/get"


def requests_to(simulator: Simulator, api: str) -> list[int | None]:
    """The errcodes the simulator answered `api` with, in order."""
    return [call.errcode for call in simulator.state.calls if call.api == api]


async def new_customer(
    settings: Settings,
    client: httpx.AsyncClient,
    app: RegisteredApp,
    simulator: Simulator,
    customer: str,
    **event: Any,
) -> None:
    """A customer the simulator knows adds a member; the hub stores the callback and the
    processor writes the actions it causes (pending, for a runner to take)."""
    simulator.state.corp(app.corp_id).contacts[customer] = Contact(customer, "新客户")
    await deliver(
        client,
        app,
        add_external_contact(
            corp_id=app.corp_id, user_id="zhangsan", external_user_id=customer, **event
        ),
    )
    maker = sessionmaker_for(settings)
    try:
        await drain(EventProcessor(maker))
    finally:
        await maker.kw["bind"].dispose()


async def warm_token(other: Replica, app: RegisteredApp) -> None:
    """A token in the shared cache, fetched outside any attempt: the counts below are then
    the calls themselves, whichever action would otherwise have fetched it first."""
    assert other.client.tokens is not None
    await other.client.tokens.token(app.corp_id, app.secret)


async def action_json(
    client: httpx.AsyncClient, headers: dict[str, str], db: asyncpg.Connection, kind: str
) -> dict[str, Any]:
    """GET /api/v1/actions/{id} of the one action of `kind`."""
    action_id = (await row(db, "SELECT id FROM actions WHERE kind = $1", kind))["id"]
    answer = await client.get(f"/api/v1/actions/{action_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def log_of(action: dict[str, Any]) -> list[tuple[int, str, int]]:
    return [(a["attempt"], a["outcome"], a["wecom_calls"]) for a in action["attempts_log"]]


async def test_a_welcome_that_met_minus_one_counts_every_call_of_its_one_attempt(
    settings: Settings,
    client: httpx.AsyncClient,
    hub: FastAPI,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    simulator.state.corp(wecom_app.corp_id).secrets.add(wecom_app.secret)
    await rule(settings, "welcome", {}, {"text": "你好"})
    code = simulator.state.issue_welcome_code(wecom_app.corp_id)
    await new_customer(settings, client, wecom_app, simulator, "wmBUSY", welcome_code=code)
    busy = 3  # -1 three times, then the welcome goes: within one pass (30, 60, 120 ms apart)
    simulator.state.faults = [Fault(api=WELCOME, errcode=-1, times=busy)]
    async with replica(settings, simulator) as other:
        await warm_token(other, wecom_app)
        await other.runner.run_once()

    assert requests_to(simulator, WELCOME) == [-1] * busy + [0]
    welcome = await action_json(client, await auth(hub), db, "welcome")
    assert (welcome["status"], welcome["attempts"]) == ("succeeded", 1)
    assert log_of(welcome) == [(1, "succeeded", busy + 1)]
    assert welcome["wecom_calls"] == busy + 1
    # The list shows the total too.
    listed = await client.get(
        "/api/v1/actions", params={"kind": "welcome"}, headers=await auth(hub)
    )
    assert [a["wecom_calls"] for a in listed.json()["data"]] == [busy + 1]


async def test_an_action_that_calls_no_wecom_api_shows_zero(
    settings: Settings,
    client: httpx.AsyncClient,
    hub: FastAPI,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """No welcome rule: the welcome is written as skipped and never runs. The enrichment
    runs, but finds the customer enriched since it was written and skips the call."""
    simulator.state.corp(wecom_app.corp_id).secrets.add(wecom_app.secret)
    await new_customer(settings, client, wecom_app, simulator, "wmQUIET", welcome_code="code")
    await db.execute("UPDATE external_contacts SET enriched_at = now() + interval '1 hour'")
    async with replica(settings, simulator) as other:
        assert await other.runner.run_once() == 1

    assert simulator.state.calls == []  # not even a token
    headers = await auth(hub)
    enrich = await action_json(client, headers, db, "enrich_contact")
    assert enrich["status"] == "skipped"
    assert (log_of(enrich), enrich["wecom_calls"]) == ([(1, "skipped", 0)], 0)
    welcome = await action_json(client, headers, db, "welcome")
    assert welcome["status"] == "skipped"
    assert (log_of(welcome), welcome["wecom_calls"]) == ([], 0)


async def test_calls_of_two_passes_add_up_and_a_token_fetched_by_an_attempt_is_its_call(
    settings: Settings,
    client: httpx.AsyncClient,
    hub: FastAPI,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """Five -1 answers outlast one pass of externalcontact/get (the client tries 4 times):
    the first pass, which also had to fetch the token, is retried by the runner later,
    and the second meets one -1 more before the answer comes."""
    simulator.state.corp(wecom_app.corp_id).secrets.add(wecom_app.secret)
    await new_customer(settings, client, wecom_app, simulator, "wmSLOW")
    simulator.state.faults = [Fault(api=GET_CONTACT, errcode=-1, times=5)]
    async with replica(settings, simulator) as other:
        assert await other.runner.run_once() == 1

        async def finished() -> bool:
            await other.runner.run_once()
            return bool(
                await db.fetchval(
                    "SELECT finished_at IS NOT NULL FROM actions WHERE kind = 'enrich_contact'"
                )
            )

        await wait_for(finished, within=15)  # the runner's retry comes 1 to 2 s later

    assert requests_to(simulator, "gettoken") == [0]
    assert requests_to(simulator, GET_CONTACT) == [-1] * 5 + [0]
    enrich = await action_json(client, await auth(hub), db, "enrich_contact")
    assert (enrich["status"], enrich["attempts"]) == ("succeeded", 2)
    assert log_of(enrich) == [(1, "retry", 1 + 4), (2, "succeeded", 2)]
    assert enrich["wecom_calls"] == 7


async def test_the_calls_of_a_runner_that_lost_its_lease_count_towards_the_total(
    settings: Settings,
    client: httpx.AsyncClient,
    hub: FastAPI,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """Its requests reached WeCom all the same (here the second one, 41051: the code was
    used), so the action's total is still the sum over its attempts log."""
    simulator.state.corp(wecom_app.corp_id).secrets.add(wecom_app.secret)
    await rule(settings, "welcome", {}, {"text": "你好"})
    code = simulator.state.issue_welcome_code(wecom_app.corp_id)
    await new_customer(settings, client, wecom_app, simulator, "wmTWICE", welcome_code=code)
    async with (
        replica(settings, simulator, processor_lease_seconds=0.5) as slow,
        replica(settings, simulator) as other,
    ):
        await warm_token(other, wecom_app)
        [stale] = [a for a in await slow.runner.claim(limit=10) if a.kind == "welcome"]

        async def lease_over() -> bool:
            return bool(await db.fetchval("SELECT bool_and(locked_until < now()) FROM actions"))

        await wait_for(lease_over)
        await other.runner.run_once()  # taken over, and sent
        await slow.runner.execute(stale)  # the slow one comes back, and calls again

    assert requests_to(simulator, WELCOME) == [0, 41051]
    welcome = await action_json(client, await auth(hub), db, "welcome")
    assert welcome["status"] == "succeeded"
    assert log_of(welcome) == [(1, "succeeded", 1), (2, "lease_lost", 1)]
    assert welcome["wecom_calls"] == 2


async def test_tasks_a_handler_starts_count_towards_its_attempt_and_nothing_else_does() -> None:
    """The count is shared with the tasks started inside it (they run in a copy of its
    context), and a request sent outside any count is nobody's."""
    sent()  # outside: nothing to count into, nothing happens
    count = CallCount()
    with counting(count):
        sent()
        await asyncio.gather(asyncio.create_task(_send_one()), asyncio.create_task(_send_one()))
        inner = CallCount()
        with counting(inner):  # a nested count takes its own requests
            sent()
        sent()
    sent()
    assert (count.sent, inner.sent) == (4, 1)


async def _send_one() -> None:
    sent()
