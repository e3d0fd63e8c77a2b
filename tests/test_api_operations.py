"""Operations over the API — tag a customer, write to a 微信客服 customer, message members:
each answered 202 with its action, run by the action runner against the simulator, and
refused at once with a reason where WeCom would refuse or silently drop it."""

from typing import Any

import asyncpg
import httpx

from app.apikeys import Scope
from app.config import Settings
from tests.api_helpers import key_header, problem
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, wait_for
from tests.test_automations import new_customer, two_known_tags
from tests.test_kf import KF, customer_writes, kf_callback, sent


async def ended(live: httpx.AsyncClient, headers: dict[str, str], action_id: int) -> dict[str, Any]:
    """The action once the runner has finished with it."""
    found: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal found
        found = (await live.get(f"/api/v1/actions/{action_id}", headers=headers)).json()
        return found["status"] not in ("pending", "running")

    await wait_for(done)
    return found


async def test_tagging_a_customer_is_one_mark_tag_however_often_it_is_asked(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    headers = await key_header(settings, Scope.WRITE)
    first_tag, second_tag = await two_known_tags(simulator, wecom_app, db)
    customer = await new_customer(live, wecom_app, simulator, state="")

    async def known() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM follows WHERE status = 'active'"))

    await wait_for(known)
    request = {"add": [first_tag], "remove": [second_tag]}
    once = {**headers, "Idempotency-Key": "order-1001-tags"}
    answer = await live.post(f"/api/v1/customers/{customer}/tags", json=request, headers=once)
    assert answer.status_code == 202, answer.text
    action = answer.json()["action"]
    assert (action["kind"], action["status"], action["target"]) == ("mark_tag", "pending", customer)
    repeat = await live.post(f"/api/v1/customers/{customer}/tags", json=request, headers=once)
    assert (repeat.status_code, repeat.json()["action"]["id"]) == (202, action["id"])
    assert repeat.headers["Idempotent-Replayed"] == "true"

    assert (await ended(live, headers, action["id"]))["status"] == "succeeded"
    calls = sent(simulator, "externalcontact/mark_tag")
    assert [(c["external_userid"], c["add_tag"], c["remove_tag"]) for c in calls] == [
        (customer, [first_tag], [second_tag])
    ]
    tags = await db.fetchval("SELECT tag_ids FROM follows WHERE external_userid = $1", customer)
    assert tags == [first_tag]

    body = problem(
        await live.post(
            f"/api/v1/customers/{customer}/tags", json={"add": ["etNOPE"]}, headers=headers
        ),
        422,
        "validation_failed",
    )
    assert body["errors"][0]["field"] == "add.0"
    problem(
        await live.post("/api/v1/customers/wmNOBODY/tags", json=request, headers=headers),
        404,
        "customer_not_found",
    )
    problem(
        await live.post(
            f"/api/v1/customers/{customer}/tags",
            json={**request, "userid": "lisi"},
            headers=headers,
        ),
        409,
        "not_a_friend",
    )
    read_only = await key_header(settings, Scope.READ)
    problem(
        await live.post(f"/api/v1/customers/{customer}/tags", json=request, headers=read_only),
        403,
        "insufficient_scope",
    )


async def test_kf_messages_only_inside_the_window(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    headers = await key_header(settings, Scope.WRITE)
    message = {
        "app": wecom_app.slug,
        "open_kfid": KF,
        "external_userid": "wmKFCUSTOMER",
        "text": "您的订单已发货",
    }
    body = problem(
        await live.post("/api/v1/kf/messages", json=message, headers=headers),
        409,
        "kf_window_closed",
    )
    assert "has not written" in body["detail"]

    token = await customer_writes(simulator, wecom_app, "在吗")
    await deliver(live, wecom_app, kf_callback(wecom_app, token))

    async def read() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM kf_windows"))

    await wait_for(read)
    answer = await live.post("/api/v1/kf/messages", json=message, headers=headers)
    assert answer.status_code == 202, answer.text
    action = await ended(live, headers, answer.json()["action"]["id"])
    assert action["status"] == "succeeded", action
    assert [c["text"]["content"] for c in sent(simulator, "kf/send_msg")] == ["您的订单已发货"]

    await db.execute("UPDATE kf_windows SET replies = 5")
    problem(
        await live.post("/api/v1/kf/messages", json=message, headers=headers),
        409,
        "kf_reply_limit",
    )


async def test_app_messages_need_an_agent_and_reach_message_send(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    headers = await key_header(settings, Scope.WRITE)
    message = {
        "app": wecom_app.slug,
        "touser": ["zhangsan"],
        "msgtype": "markdown",
        "content": "**hi**",
    }
    body = problem(
        await live.post("/api/v1/app-messages", json=message, headers=headers),
        422,
        "validation_failed",
    )
    assert body["errors"][0]["field"] == "app"

    await db.execute("UPDATE apps SET agent_id = 1000002")
    answer = await live.post("/api/v1/app-messages", json=message, headers=headers)
    assert answer.status_code == 202, answer.text
    action = await ended(live, headers, answer.json()["action"]["id"])
    assert action["status"] == "succeeded", action
    [call] = sent(simulator, "message/send")
    assert (call["touser"], call["agentid"], call["markdown"]) == (
        "zhangsan",
        1000002,
        {"content": "**hi**"},
    )
    body = problem(
        await live.post("/api/v1/app-messages", json={**message, "touser": []}, headers=headers),
        422,
        "validation_failed",
    )
    assert body["errors"][0]["field"] == "touser"
