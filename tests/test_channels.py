"""Channels through the REST API against the simulated WeCom over real HTTP: a channel's
way, state and code are made at WeCom and kept; limits are checked before WeCom is asked;
WeCom's errcodes come back as they are; a lost answer neither loses the way nor makes a
second one; updates send whole member lists; the image is fetched once and kept."""

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.automations.rules import TagMatch, WelcomeMatch
from app.config import Settings
from app.main import create_app
from app.simulator.state import Corp, Fault
from tests.api_helpers import auth, problem
from tests.conftest import RegisteredApp, Simulator

STATE = re.compile(r"ch_[a-z2-7]{16}")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
M0, M1, M2 = "member000", "member001", "member002"


@pytest.fixture
async def hub(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> AsyncIterator[FastAPI]:
    """wecom-hub whose WeCom is the simulator (no processing: these tests need none)."""
    simulator.state.corp(wecom_app.corp_id).secrets.add(wecom_app.secret)
    simulator.state.seed(wecom_app.corp_id, members=3, customers_per_member=0, groups=3, tags=3)
    configured = settings.model_copy(update={"wecom_api_base_url": simulator.url})
    app = create_app(configured, database_url=configured.database_url)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(hub: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    headers = await auth(hub)
    transport = httpx.ASGITransport(app=hub)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://wecom-hub.test", headers=headers
    ) as client:
        yield client


def corp_of(simulator: Simulator, app: RegisteredApp) -> Corp:
    return simulator.state.corp(app.corp_id)


def calls(simulator: Simulator, api: str) -> list[dict[str, Any]]:
    return [c.body for c in simulator.state.calls if c.api == f"externalcontact/{api}"]


async def known_tag(simulator: Simulator, app: RegisteredApp, db: asyncpg.Connection) -> str:
    """One of the corp's tags, known to the hub as `sync` would have made it known."""
    tag: str = next(iter(corp_of(simulator, app).tag_groups.values()))["tag"][0]["id"]
    await db.execute(
        "INSERT INTO tags (corp_id, tag_id, name) VALUES ($1, $2, 't')", app.corp_id, tag
    )
    return tag


async def create(api: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    answer = await api.post("/api/v1/channels", json={"name": "门店A", "app": "demo"} | fields)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def test_a_channel_gets_a_generated_state_and_its_way_at_wecom(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp
) -> None:
    channel = await create(api, userids=[M0, M1], skip_verify=False, remark="门店A 海报")
    assert STATE.fullmatch(channel["state"])
    assert channel["status"] == "active" and channel["source"] == "api"
    way = corp_of(simulator, wecom_app).contact_ways[channel["config_id"]]
    assert (way.state, way.user, way.scene, way.type) == (channel["state"], [M0, M1], 2, 2)
    assert (way.skip_verify, way.remark) == (False, "门店A 海报")
    assert channel["qr_code"] == way.qr_code

    other = await create(api, name="门店B", userids=[M0])
    assert other["state"] != channel["state"]
    listed = (await api.get("/api/v1/channels", params={"app": "demo"})).json()
    assert [c["id"] for c in listed["data"]] == [other["id"], channel["id"]]
    page = (await api.get("/api/v1/channels", params={"limit": 1})).json()
    assert [c["id"] for c in page["data"]] == [other["id"]]
    rest = await api.get("/api/v1/channels", params={"limit": 1, "cursor": page["next_cursor"]})
    assert [c["id"] for c in rest.json()["data"]] == [channel["id"]]
    assert (await api.get(f"/api/v1/channels/{channel['id']}")).json() == channel
    problem(await api.get("/api/v1/channels/999999"), 404, "channel_not_found")


async def test_limits_are_checked_before_wecom_is_asked(
    api: httpx.AsyncClient, simulator: Simulator, db: asyncpg.Connection
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"userids": [f"u{i}" for i in range(101)]}, "userids"),
        ({"userids": [M0], "remark": "x" * 31}, "remark"),
        ({"userids": []}, "userids"),
        ({"userids": [M0], "app": "nope"}, "app"),
        ({"userids": [M0], "add_tags": ["etUNKNOWN"]}, "add_tags"),
        ({"userids": [M0], "welcome": {"text": "{nope}"}}, "welcome.text"),
        ({"userids": [M0], "welcome": {}}, "welcome"),
        ({"userids": [M0], "welcome_rule_id": 424242}, "welcome_rule_id"),
        ({"kind": "join_way", "chat_ids": [f"wr{i}" for i in range(6)]}, "chat_ids"),
        ({"kind": "join_way", "chat_ids": []}, "chat_ids"),
        ({"kind": "join_way", "chat_ids": ["wr1"], "userids": [M0]}, "userids"),
    ]
    for fields, field in cases:
        answer = await api.post("/api/v1/channels", json={"name": "x", "app": "demo"} | fields)
        body = problem(answer, 422, "validation_failed")
        assert field in [e["field"] for e in body["errors"]], (fields, body)
    answer = await api.post("/api/v1/channels", json={"app": "demo", "userids": [M0]})
    assert "name" in [e["field"] for e in problem(answer, 422, "validation_failed")["errors"]]
    assert calls(simulator, "add_contact_way") == []
    assert calls(simulator, "groupchat/add_join_way") == []
    assert await db.fetchval("SELECT count(*) FROM channels") == 0
    assert await db.fetchval("SELECT count(*) FROM rules") == 0


async def test_wecom_errcodes_come_back_as_they_are_and_nothing_is_kept(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    corp = corp_of(simulator, wecom_app)
    corp.limits.contact_way_quota = 0
    body = problem(
        await api.post("/api/v1/channels", json={"name": "x", "app": "demo", "userids": [M0]}),
        409,
        "wecom.41045",
    )
    assert body["wecom_errcode"] == 41045 and "quota" in body["detail"]
    corp.limits.contact_way_quota = 500_000

    body = problem(
        await api.post(
            "/api/v1/channels", json={"name": "x", "app": "demo", "userids": ["stranger"]}
        ),
        403,
        "wecom.60011",
    )
    assert "visible range" in body["detail"] and body["wecom_errmsg"]

    corp.limits.customer_contact_permission = False
    problem(
        await api.post("/api/v1/channels", json={"name": "x", "app": "demo", "userids": [M0]}),
        403,
        "wecom.84074",
    )
    corp.limits.customer_contact_permission = True

    for errcode in (45009, -1):
        simulator.state.faults = [Fault(api="externalcontact/add_contact_way", errcode=errcode)]
        answer = await api.post(
            "/api/v1/channels", json={"name": "x", "app": "demo", "userids": [M0]}
        )
        body = problem(answer, 503, "wecom_unavailable")
        assert answer.headers["Retry-After"] == "5" and body["wecom_errcode"] == errcode
    simulator.state.faults = []
    # Refused or busy, WeCom made nothing: no channel, no way, no rule is left behind.
    assert await db.fetchval("SELECT count(*) FROM channels") == 0
    assert corp.contact_ways == {}


async def test_an_answer_lost_after_wecom_made_the_way_adopts_that_way(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp
) -> None:
    """add_contact_way is sent once (a second call would make a second way); its lost
    answer is found by the state."""
    simulator.state.faults = [
        Fault(api="externalcontact/add_contact_way", http_status=500, after=True, times=1)
    ]
    channel = await create(api, userids=[M0])
    ways = corp_of(simulator, wecom_app).contact_ways
    assert list(ways) == [channel["config_id"]]
    assert ways[channel["config_id"]].state == channel["state"]
    assert len(calls(simulator, "add_contact_way")) == 1


async def test_a_pending_channel_is_finished_by_a_retry_with_the_same_idempotency_key(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    simulator.state.faults = [
        Fault(api="externalcontact/add_contact_way", http_status=500, after=True, times=1),
        Fault(api="externalcontact/list_contact_way", errcode=-1, times=10),
    ]
    request = {"name": "门店C", "app": "demo", "userids": [M0]}
    headers = {"Idempotency-Key": "create-c"}
    answer = await api.post("/api/v1/channels", json=request, headers=headers)
    body = problem(answer, 503, "wecom_unavailable")
    assert "pending" in body["detail"] and answer.headers["Retry-After"]
    pending = await db.fetchrow("SELECT id, status, state, config_id FROM channels")
    assert pending is not None and pending["status"] == "pending"
    assert pending["config_id"] is None
    problem(await api.get(f"/api/v1/channels/{pending['id']}/qr.png"), 409, "channel_pending")

    simulator.state.faults = []
    retried = await api.post("/api/v1/channels", json=request, headers=headers)
    assert retried.status_code == 201, retried.text
    channel = retried.json()
    assert (channel["id"], channel["state"]) == (pending["id"], pending["state"])
    ways = corp_of(simulator, wecom_app).contact_ways
    assert list(ways) == [channel["config_id"]]
    again = await api.post("/api/v1/channels", json=request, headers=headers)
    assert again.json() == channel and again.headers["Idempotent-Replayed"] == "true"
    assert len(calls(simulator, "add_contact_way")) == 1


async def test_a_retried_create_with_an_idempotency_key_answers_the_same_channel(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp
) -> None:
    request = {"name": "门店D", "app": "demo", "userids": [M0]}
    headers = {"Idempotency-Key": "create-d"}
    first = await api.post("/api/v1/channels", json=request, headers=headers)
    second = await api.post("/api/v1/channels", json=request, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert len(corp_of(simulator, wecom_app).contact_ways) == 1
    reused = await api.post("/api/v1/channels", json=request | {"name": "other"}, headers=headers)
    problem(reused, 422, "idempotency_key_reused")


async def test_an_update_sends_whole_member_lists_and_a_refusal_changes_nothing(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp
) -> None:
    channel = await create(api, userids=[M0])
    url = f"/api/v1/channels/{channel['id']}"
    answer = await api.patch(url, json={"userids": [M1, M2]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["userids"] == [M1, M2]
    way = corp_of(simulator, wecom_app).contact_ways[channel["config_id"]]
    assert way.user == [M1, M2]

    answer = await api.patch(url, json={"remark": "秋季", "name": "门店A (秋)"})
    assert answer.json()["remark"] == "秋季" and answer.json()["name"] == "门店A (秋)"
    update = calls(simulator, "update_contact_way")[-1]
    assert update["user"] == [M1, M2] and update["party"] == [] and update["remark"] == "秋季"
    assert way.user == [M1, M2] and way.remark == "秋季"

    problem(await api.patch(url, json={"userids": ["stranger"]}), 403, "wecom.60011")
    assert (await api.get(url)).json()["userids"] == [M1, M2]
    assert way.user == [M1, M2]
    body = problem(await api.patch(url, json={"userids": []}), 422, "validation_failed")
    assert body["errors"][0]["field"] == "userids"
    body = problem(await api.patch(url, json={"remark": None}), 422, "validation_failed")
    assert body["errors"][0]["field"] == "remark"
    calls_before = len(calls(simulator, "update_contact_way"))
    await api.patch(url, json={"name": "门店A"})  # nothing WeCom keeps changed: no call
    assert len(calls(simulator, "update_contact_way")) == calls_before


async def test_deleting_removes_the_way_and_the_rules_the_channel_owns(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    tag = await known_tag(simulator, wecom_app, db)
    channel = await create(api, userids=[M0], welcome={"text": "欢迎"}, add_tags=[tag])
    rules = await db.fetch("SELECT id, kind, match FROM rules ORDER BY id")
    assert [r["id"] for r in rules] == [channel["welcome_rule_id"], channel["tag_rule_id"]]
    assert [r["kind"] for r in rules] == ["welcome", "tag"]
    deleted = await api.delete(f"/api/v1/channels/{channel['id']}")
    assert deleted.status_code == 204
    assert corp_of(simulator, wecom_app).contact_ways == {}
    assert await db.fetchval("SELECT count(*) FROM rules") == 0
    problem(await api.get(f"/api/v1/channels/{channel['id']}"), 404, "channel_not_found")

    # A way deleted elsewhere (41044) is deleted here all the same.
    gone = await create(api, userids=[M0])
    del corp_of(simulator, wecom_app).contact_ways[gone["config_id"]]
    assert (await api.delete(f"/api/v1/channels/{gone['id']}")).status_code == 204
    assert await db.fetchval("SELECT count(*) FROM channels") == 0


async def test_a_linked_welcome_rule_welcomes_the_channel_until_it_is_removed(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rule = await api.post(
        "/api/v1/rules",
        json={
            "kind": "welcome",
            "name": "stores",
            "app": "demo",
            "match": {"state": "store_", "state_mode": "prefix"},
            "content": {"text": "欢迎光临"},
        },
    )
    assert rule.status_code == 201, rule.text
    rule_id = rule.json()["id"]
    channel = await create(api, userids=[M0], welcome_rule_id=rule_id)
    assert channel["welcome_rule_id"] == rule_id
    match = (await api.get(f"/api/v1/rules/{rule_id}")).json()["match"]
    assert match["states"] == [channel["state"]] and match["state"] == "store_"

    assert (await api.delete(f"/api/v1/channels/{channel['id']}")).status_code == 204
    match = (await api.get(f"/api/v1/rules/{rule_id}")).json()["match"]
    assert not match.get("states") and match["state"] == "store_"  # the rule itself stays


def test_exact_states_are_or_ed_with_the_state_and_as_specific_as_an_exact_one() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    rule = WelcomeMatch(state="store_", state_mode="prefix", states=["ch_a"])
    assert rule.matches(state="ch_a", user_id="u", at=now)
    assert rule.matches(state="store_1", user_id="u", at=now)
    assert not rule.matches(state="ch_b", user_id="u", at=now)
    assert rule.specificity() == WelcomeMatch(state="x").specificity()
    only = WelcomeMatch(states=["ch_a"])
    assert only.matches(state="ch_a", user_id="u", at=now)
    assert not only.matches(state="", user_id="u", at=now)
    assert WelcomeMatch().matches(state="anything", user_id="u", at=now)
    tags = TagMatch(on="channel", states=["ch_a"])
    assert tags.matches_channel("ch_a") and not tags.matches_channel("ch_b")
    with pytest.raises(ValueError, match="needs a state"):
        TagMatch(on="channel")


async def test_the_code_image_is_fetched_once_and_kept(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    channel = await create(api, userids=[M0])
    url = f"/api/v1/channels/{channel['id']}/qr.png"
    first = await api.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content.startswith(PNG_SIGNATURE)
    async with httpx.AsyncClient() as http:
        assert (await http.get(channel["qr_code"])).content == first.content
    # The simulator no longer serves it: the kept copy is served.
    del corp_of(simulator, wecom_app).contact_ways[channel["config_id"]]
    second = await api.get(url)
    assert second.status_code == 200 and second.content == first.content
    assert await db.fetchval("SELECT qr_fetched_at IS NOT NULL FROM channels") is True


async def test_an_image_that_cannot_be_fetched_is_a_502_or_503_never_a_500(
    api: httpx.AsyncClient, simulator: Simulator, db: asyncpg.Connection
) -> None:
    channel = await create(api, userids=[M0])
    url = f"/api/v1/channels/{channel['id']}/qr.png"
    for qr_code, status in (
        ("http://127.0.0.1:9/nothing-listens.png", 503),  # discard port: refused
        (f"{simulator.url}/sim/qr/unknown.png", 502),  # 404
        (f"{simulator.url}/cgi-bin/gettoken", 502),  # not a PNG
        ("file:///etc/passwd", 502),
    ):
        await db.execute("UPDATE channels SET qr_code = $1", qr_code)
        answer = await api.get(url)
        problem(answer, status, "qr_code_unavailable")
        if status == 503:
            assert answer.headers["Retry-After"]


async def test_a_join_way_links_groups_and_has_a_code(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp
) -> None:
    chats = list(corp_of(simulator, wecom_app).groups)[:2]
    channel = await create(api, name="春季活动群", kind="join_way", chat_ids=chats)
    way = corp_of(simulator, wecom_app).join_ways[channel["config_id"]]
    assert (way.chat_id_list, way.state, way.scene) == (chats, channel["state"], 2)
    assert channel["qr_code"] == way.qr_code
    answer = await api.patch(
        f"/api/v1/channels/{channel['id']}", json={"chat_ids": chats[:1], "remark": "春"}
    )
    assert answer.status_code == 200, answer.text
    assert (way.chat_id_list, way.state, way.remark) == (chats[:1], channel["state"], "春")
    png = await api.get(f"/api/v1/channels/{channel['id']}/qr.png")
    assert png.content.startswith(PNG_SIGNATURE)
    problem(
        await api.post(
            "/api/v1/channels",
            json={"name": "x", "app": "demo", "kind": "join_way", "chat_ids": ["wrNOPE"]},
        ),
        422,
        "wecom.40050",
    )
    assert (await api.delete(f"/api/v1/channels/{channel['id']}")).status_code == 204
    assert corp_of(simulator, wecom_app).join_ways == {}


async def test_channels_need_a_write_key_to_change(hub: FastAPI) -> None:
    from app.apikeys import Scope

    headers = await auth(hub, Scope.READ)
    transport = httpx.ASGITransport(app=hub)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        answer = await client.post(
            "/api/v1/channels",
            json={"name": "x", "app": "demo", "userids": [M0]},
            headers=headers,
        )
        problem(answer, 403, "insufficient_scope")
        assert (await client.get("/api/v1/channels", headers=headers)).status_code == 200


async def test_a_delete_that_wecom_refuses_keeps_the_channel_and_a_way_it_lost_is_gone(
    api: httpx.AsyncClient, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """WeCom busy: 503, the channel and its way both kept, so a retry deletes both. WeCom
    no longer finding the way (41044, or the 41037 it answers del for a config_id it does
    not know): deleted here, as there is nothing left at WeCom."""
    channel = await create(api, userids=[M0])
    url = f"/api/v1/channels/{channel['id']}"
    simulator.state.faults = [Fault(api="externalcontact/del_contact_way", errcode=-1)]
    answer = await api.delete(url)
    problem(answer, 503, "wecom_unavailable")
    assert answer.headers["Retry-After"]
    simulator.state.faults = []
    assert (await api.get(url)).status_code == 200
    assert channel["config_id"] in corp_of(simulator, wecom_app).contact_ways
    assert (await api.delete(url)).status_code == 204
    assert corp_of(simulator, wecom_app).contact_ways == {}

    other = await create(api, userids=[M0])
    simulator.state.faults = [Fault(api="externalcontact/del_contact_way", errcode=41037)]
    assert (await api.delete(f"/api/v1/channels/{other['id']}")).status_code == 204
    assert await db.fetchval("SELECT count(*) FROM channels") == 0


async def test_a_lookup_that_cannot_read_the_whole_list_keeps_the_channel_pending(
    api: httpx.AsyncClient,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The made way is past the pages a lookup reads: "not found" would add a second way
    (or forget the first), so the channel stays pending and the answer is 503."""
    from app.channels import wecom

    monkeypatch.setattr(wecom, "LIST_PAGE", 1)
    monkeypatch.setattr(wecom, "LOOKUP_MAX_PAGES", 1)
    async with httpx.AsyncClient(base_url=simulator.url) as sim:
        for state in ("console_a", "console_b"):  # made in the admin console just before
            made = await sim.post(
                f"/sim/corps/{wecom_app.corp_id}/contact_ways", json={"users": [M0], "state": state}
            )
            assert made.status_code == 200, made.text
    simulator.state.faults = [
        Fault(api="externalcontact/add_contact_way", http_status=500, after=True, times=1)
    ]
    request = {"name": "门店E", "app": "demo", "userids": [M0]}
    headers = {"Idempotency-Key": "create-e"}
    problem(
        await api.post("/api/v1/channels", json=request, headers=headers), 503, "wecom_unavailable"
    )
    assert await db.fetchval("SELECT status FROM channels") == "pending"
    problem(
        await api.post("/api/v1/channels", json=request, headers=headers), 503, "wecom_unavailable"
    )
    assert len(calls(simulator, "add_contact_way")) == 1
    assert len(corp_of(simulator, wecom_app).contact_ways) == 3

    monkeypatch.setattr(wecom, "LOOKUP_MAX_PAGES", 5)
    retried = await api.post("/api/v1/channels", json=request, headers=headers)
    assert retried.status_code == 201, retried.text
    assert len(calls(simulator, "add_contact_way")) == 1
    assert len(corp_of(simulator, wecom_app).contact_ways) == 3


async def test_an_update_keeps_the_state_and_departments_are_bounded(
    api: httpx.AsyncClient, simulator: Simulator
) -> None:
    channel = await create(api, userids=[M0])
    answer = await api.patch(f"/api/v1/channels/{channel['id']}", json={"userids": [M1]})
    assert answer.status_code == 200, answer.text
    assert calls(simulator, "update_contact_way")[-1]["state"] == channel["state"]
    parties = {"name": "x", "app": "demo", "party_ids": list(range(1, 102))}
    body = problem(await api.post("/api/v1/channels", json=parties), 422, "validation_failed")
    assert "party_ids" in [e["field"] for e in body["errors"]]
