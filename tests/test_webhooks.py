"""Outbound webhooks end to end: wecom-hub processing real callbacks, WeCom played by the
simulator, and receivers that are real HTTP servers verifying every delivery with the
`standardwebhooks` package, as an integrator's would."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from app.apikeys import Scope
from app.config import Settings
from app.simulator.callbacks import add_external_contact
from app.simulator.state import Fault
from tests.api_helpers import key_header, problem
from tests.conftest import RegisteredApp, Simulator
from tests.process_helpers import free_port
from tests.processing_helpers import deliver, wait_for
from tests.test_automations import new_customer, rule, welcomes


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The retry schedule (5 s … 24 h) shortened a thousandfold: 5 ms, 300 ms, 1.8 s…; and
    subscriptions seen at once."""
    return settings.model_copy(
        update={
            "webhook_retry_scale": 0.001,
            "webhook_timeout_seconds": 3.0,
            "webhook_cache_seconds": 0,  # a subscription is seen by the next event
        }
    )


@dataclass
class Received:
    id: str
    body: dict[str, Any]
    signatures: str


@dataclass
class Receiver:
    """A webhook receiver on a real port: verifies each delivery with every secret in
    `secrets` (all must verify), records it, answers what `answers` says next (200 after)."""

    url: str
    secrets: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except (WebhookVerificationError, ValueError) as exc:
                self.unverified.append(f"{headers.get('webhook-id')}: {exc}")
        self.received.append(
            Received(headers["webhook-id"], json.loads(body), headers["webhook-signature"])
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status, text=f"answered {status}")

    def ids(self, type_: str | None = None) -> list[str]:
        return [r.id for r in self.received if type_ is None or r.body["type"] == type_]


async def serve(receiver: Receiver, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    # A handler still sleeping when wecom-hub gave up on it ends with the connection.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    found = Receiver(f"http://127.0.0.1:{port}/hooks")
    runner = await serve(found, port)
    yield found
    await runner.cleanup()


async def subscribe(
    live: httpx.AsyncClient, headers: dict[str, str], receiver: Receiver, *types: str
) -> dict[str, Any]:
    answer = await live.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "event_types": list(types), "description": "test"},
        headers=headers,
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    assert created["secret"].startswith("whsec_")
    receiver.secrets.append(created["secret"])
    return created


async def until(check: Callable[[], bool], within: float = 10) -> None:
    async def holds() -> bool:
        return check()

    await wait_for(holds, within)


async def test_deliveries_are_signed_retried_with_the_same_id_and_logged(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    receiver: Receiver,
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    webhook = await subscribe(live, headers, receiver, "customer.added")
    receiver.answers = [500]
    customer = await new_customer(live, wecom_app, simulator, state="store_sh")
    await until(lambda: len(receiver.received) == 2)
    first, second = receiver.received
    assert first.id == second.id  # the retry is the same message
    assert second.body["type"] == "customer.added"
    data = second.body["data"]
    assert (data["external_userid"], data["userid"], data["state"]) == (
        customer,
        "zhangsan",
        "store_sh",
    )
    assert receiver.unverified == []

    # Delivered: never again, however often WeCom repeats the callback. (The outcome is
    # recorded just after the receiver's answer: wait for it, not for the answer alone.)
    deliveries = f"/api/v1/webhooks/{webhook['id']}/deliveries"

    async def recorded() -> bool:
        listed = await live.get(deliveries, headers=headers)
        return bool(listed.json()["data"][0]["status"] != "running")

    await wait_for(recorded)
    listed = await live.get(deliveries, headers=headers)
    [delivery] = listed.json()["data"]
    assert (delivery["status"], delivery["message_id"]) == ("succeeded", first.id)
    detail = await live.get(
        f"/api/v1/webhooks/{webhook['id']}/deliveries/{delivery['id']}", headers=headers
    )
    log = detail.json()["attempts_log"]
    assert [(a["http_status"], a["outcome"], a["response"]) for a in log] == [
        (500, "retry", "answered 500"),
        (200, "succeeded", "answered 200"),
    ]
    redelivered = await live.post(
        f"/api/v1/webhooks/{webhook['id']}/deliveries/{delivery['id']}/redeliver", headers=headers
    )
    assert redelivered.status_code == 202
    await until(lambda: len(receiver.received) == 3)
    assert receiver.received[2].id == first.id


async def test_one_wecom_event_is_one_message_however_often_it_is_delivered(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    receiver: Receiver,
    db: asyncpg.Connection,
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    webhook = await subscribe(live, headers, receiver)  # every type
    callback = add_external_contact(
        corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id="wmTWICE"
    )
    for _ in range(3):
        await deliver(live, wecom_app, callback)

    async def processed() -> bool:
        return bool(await db.fetchval("SELECT bool_and(status = 'processed') FROM events"))

    await wait_for(processed)
    await until(lambda: len(receiver.ids("customer.added")) == 1)
    listed = await live.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", headers=headers)
    assert [d["type"] for d in listed.json()["data"]].count("customer.added") == 1


async def test_a_receiver_that_was_down_gets_everything_once_it_is_back(
    live: httpx.AsyncClient, settings: Settings, simulator: Simulator, wecom_app: RegisteredApp
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    port = free_port()
    down = Receiver(f"http://127.0.0.1:{port}/hooks")
    webhook = await subscribe(live, headers, down, "customer.added")
    for i in range(3):
        await deliver(
            live,
            wecom_app,
            add_external_contact(
                corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id=f"wmDOWN{i}"
            ),
        )

    async def refused_twice() -> bool:  # retried at 5 ms, 300 ms, 1.8 s… (scaled)
        listed = await live.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", headers=headers)
        found = listed.json()["data"]
        return len(found) == 3 and all(d["attempts"] >= 2 for d in found)

    await wait_for(refused_twice)
    assert all(
        d["error"]["code"] == "unreachable"
        for d in (
            await live.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", headers=headers)
        ).json()["data"]
    )
    runner = await serve(down, port)
    try:
        await until(lambda: len(set(down.ids())) == 3, within=20)
        assert sorted(r.body["data"]["external_userid"] for r in down.received) == [
            "wmDOWN0",
            "wmDOWN1",
            "wmDOWN2",
        ]
        assert down.unverified == []
    finally:
        await runner.cleanup()


async def test_410_disables_and_the_reason_is_shown(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    receiver: Receiver,
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    webhook = await subscribe(live, headers, receiver, "customer.added")
    receiver.answers = [410]
    sent = await live.post(f"/api/v1/webhooks/{webhook['id']}/test", headers=headers)
    assert sent.status_code == 202, sent.text

    async def disabled() -> bool:
        shown = await live.get(f"/api/v1/webhooks/{webhook['id']}", headers=headers)
        return shown.json()["enabled"] is False

    await wait_for(disabled)
    shown = (await live.get(f"/api/v1/webhooks/{webhook['id']}", headers=headers)).json()
    assert shown["disabled_reason"] == "the receiver answered 410 Gone"
    problem(
        await live.post(f"/api/v1/webhooks/{webhook['id']}/test", headers=headers),
        409,
        "webhook_disabled",
    )
    again = await live.patch(
        f"/api/v1/webhooks/{webhook['id']}", json={"enabled": True}, headers=headers
    )
    assert (again.json()["enabled"], again.json()["disabled_reason"]) == (True, None)


async def test_a_rotated_secret_and_the_old_one_both_verify(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    receiver: Receiver,
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    webhook = await subscribe(live, headers, receiver)
    rotated = await live.post(f"/api/v1/webhooks/{webhook['id']}/rotate-secret", headers=headers)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != webhook["secret"] and rotated.json()["previous_secret_until"]
    receiver.secrets.append(new_secret)  # both must verify each delivery
    await live.post(f"/api/v1/webhooks/{webhook['id']}/test", headers=headers)
    await until(lambda: len(receiver.received) == 1)
    assert len(receiver.received[0].signatures.split(" ")) == 2
    assert receiver.unverified == []
    listed = (await live.get("/api/v1/webhooks", headers=headers)).json()["data"]
    assert "secret" not in listed[0]


async def test_cloud_metadata_and_link_local_addresses_are_refused(
    live: httpx.AsyncClient, settings: Settings, wecom_app: RegisteredApp
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    created = await live.post(
        "/api/v1/webhooks",
        json={"url": "http://169.254.169.254/latest/meta-data/"},
        headers=headers,
    )
    webhook = created.json()
    await live.post(f"/api/v1/webhooks/{webhook['id']}/test", headers=headers)
    found: dict[str, Any] = {}

    async def failed() -> bool:
        nonlocal found
        listed = await live.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", headers=headers)
        found = listed.json()["data"][0] if listed.json()["data"] else {}
        return found.get("status") == "failed"

    await wait_for(failed)
    assert found["error"]["code"] == "address_refused"
    assert found["attempts"] == 1  # not retried
    body = problem(
        await live.post("/api/v1/webhooks", json={"url": "ftp://example.com/x"}, headers=headers),
        422,
        "validation_failed",
    )
    assert body["errors"][0]["field"] == "url"


@pytest.fixture
async def slow_receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    found = Receiver(f"http://127.0.0.1:{port}/hooks", delay=10.0)
    runner = await serve(found, port)
    yield found
    await runner.shutdown()
    await runner.cleanup()


async def test_a_slow_receiver_never_delays_a_welcome(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    slow_receiver: Receiver,
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    await subscribe(live, headers, slow_receiver)  # every type, each answered after 10 s
    await rule(settings, "welcome", {}, {"text": "欢迎"})
    started = time.monotonic()
    for _ in range(20):
        await new_customer(live, wecom_app, simulator, state="live")
    await until(lambda: len(welcomes(simulator)) == 20, within=5)
    assert time.monotonic() - started < 5
    assert slow_receiver.received  # the deliveries were under way meanwhile


async def test_deliveries_that_all_fail_for_days_disable_the_subscription(
    live: httpx.AsyncClient,
    settings: Settings,
    wecom_app: RegisteredApp,
    receiver: Receiver,
    db: asyncpg.Connection,
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    webhook = await subscribe(live, headers, receiver, "customer.added")
    receiver.answers = [500] * 100
    await live.post(f"/api/v1/webhooks/{webhook['id']}/test", headers=headers)
    await until(lambda: len(receiver.received) >= 1)
    # As if the first failure had been six days ago: the next failure ends it.
    await db.execute("UPDATE webhook_endpoints SET failing_since = now() - interval '6 days'")

    async def disabled() -> bool:
        shown = await live.get(f"/api/v1/webhooks/{webhook['id']}", headers=headers)
        return shown.json()["enabled"] is False

    await wait_for(disabled)
    shown = (await live.get(f"/api/v1/webhooks/{webhook['id']}", headers=headers)).json()
    assert shown["disabled_reason"] == "every delivery failed for 5 days"


async def test_a_redirect_is_a_failure_and_is_not_followed(
    live: httpx.AsyncClient, settings: Settings, wecom_app: RegisteredApp
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    followed: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", moved)
    app.router.add_route("*", "/elsewhere", elsewhere)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        created = await live.post(
            "/api/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hooks"}, headers=headers
        )
        webhook = created.json()
        await live.post(f"/api/v1/webhooks/{webhook['id']}/test", headers=headers)
        found: dict[str, Any] = {}

        async def tried() -> bool:
            nonlocal found
            listed = await live.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", headers=headers)
            found = listed.json()["data"][0] if listed.json()["data"] else {}
            return bool(found.get("error"))

        await wait_for(tried)
        assert found["error"]["code"] == "http.302"
        assert followed == []
    finally:
        await runner.cleanup()


async def test_a_failed_action_is_announced(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    receiver: Receiver,
) -> None:
    headers = await key_header(settings, Scope.ADMIN)
    await subscribe(live, headers, receiver, "action.failed")
    simulator.state.faults = [Fault(api="externalcontact/get", errcode=48002)]
    await deliver(
        live,
        wecom_app,
        add_external_contact(corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id="wmX"),
    )
    await until(lambda: len(receiver.received) == 1)
    data = receiver.received[0].body["data"]
    assert (data["kind"], data["target"], data["error"]["code"]) == (
        "enrich_contact",
        "wmX",
        "wecom.48002",
    )
