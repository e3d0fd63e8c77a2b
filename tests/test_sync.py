"""`wecom-hub sync` against a simulated corp: everything imported, twice changes nothing,
an interruption resumes, members' names reach welcome messages."""

import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from app.automations.store import create_rule, rule_spec
from app.config import Settings
from app.crypto.at_rest import SecretBox, parse_key
from app.db import create_engine, create_sessionmaker
from app.simulator.callbacks import add_external_contact
from app.simulator.state import Fault
from app.sync import Sync, SyncBusy
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError
from app.wecom.factory import open_client
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, settled

STATE_QUERIES = {
    "contacts": "SELECT corp_id, external_userid, name, gender FROM external_contacts ORDER BY 2",
    "follows": "SELECT userid, external_userid, status, state, add_way, added_at FROM follows"
    " ORDER BY 1, 2",
    "groups": "SELECT chat_id, name, owner, created_at FROM customer_groups ORDER BY 1",
    "members": "SELECT chat_id, member_id, joined_at FROM group_members ORDER BY 1, 2",
    "tags": "SELECT tag_id, name, deleted_at FROM tags ORDER BY 1",
    "corp_members": "SELECT userid, name, department, position, deleted_at FROM members ORDER BY 1",
}


async def snapshot(db: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {name: [tuple(r) for r in await db.fetch(q)] for name, q in STATE_QUERIES.items()}


@pytest.fixture
async def syncing(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> AsyncIterator[tuple[Sync, WecomClient]]:
    simulator.state.corp(wecom_app.corp_id).secrets.add(wecom_app.secret)
    configured = settings.model_copy(update={"wecom_api_base_url": simulator.url})
    assert configured.database_url and configured.secret_key
    engine = create_engine(configured.database_url, configured, pool_size=4)
    maker = create_sessionmaker(engine)
    box = SecretBox(parse_key(configured.secret_key.get_secret_value()))
    app_id = await db.fetchval("SELECT id FROM apps")
    async with open_client(configured, maker, box) as client:
        yield Sync(maker, client, Credentials(wecom_app.corp_id, wecom_app.secret, app_id)), client
    await engine.dispose()


async def test_imports_5_members_x_2000_customers_and_200_groups_and_twice_changes_nothing(
    syncing: tuple[Sync, WecomClient],
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    sync, _ = syncing
    simulator.state.seed(wecom_app.corp_id, members=5, customers_per_member=2000, groups=200)
    first = await sync.run()
    assert first.counts == {
        "tags": 10,
        "members": 5,
        "follows": 10_000,
        "groups": 200,
        "channels": 0,
    }
    assert first.notes == []
    before = await snapshot(db)
    assert [len(before[k]) for k in ("contacts", "follows", "groups", "members", "tags")] == [
        10_000,
        10_000,
        200,
        200,
        10,
    ]
    assert before["corp_members"] == [
        (f"member{m:03d}", f"成员{m}", "1", None, None) for m in range(5)
    ]

    second = await sync.run()
    assert second.run_id != first.run_id and not second.resumed
    assert await snapshot(db) == before
    assert await db.fetchval("SELECT count(*) FROM sync_runs WHERE status = 'done'") == 2


async def test_an_interrupted_sync_resumes_where_it_stopped(
    syncing: tuple[Sync, WecomClient],
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    sync, _ = syncing
    simulator.state.seed(wecom_app.corp_id, members=2, customers_per_member=300, groups=5)
    # The fourth page of customers fails for good (a permanent errcode): the sync stops.
    simulator.state.faults = [Fault(api="externalcontact/batch/get_by_user", errcode=48002)]
    simulator.state.faults[0].probability = 1.0
    pages_before_failure = 3
    original = simulator.state.fault_for

    def fail_after_three(api: str) -> Fault | None:
        done = sum(1 for c in simulator.state.calls if c.api == api and c.errcode == 0)
        return original(api) if done >= pages_before_failure else None

    simulator.state.fault_for = fail_after_three  # type: ignore[method-assign]
    with pytest.raises(WecomApiError):
        await sync.run()
    run = await db.fetchrow("SELECT status, error, counts FROM sync_runs")
    assert run is not None and run["status"] == "running" and "48002" in run["error"]
    assert await db.fetchval("SELECT count(*) FROM follows") == 300

    simulator.state.fault_for = original  # type: ignore[method-assign]
    simulator.state.faults = []
    simulator.state.calls.clear()
    resumed = await sync.run()
    assert resumed.resumed and resumed.counts["follows"] == 600
    pages = [c for c in simulator.state.calls if c.api == "externalcontact/batch/get_by_user"]
    assert len(pages) == 3  # the three not yet done, not all six again
    assert not [c for c in simulator.state.calls if c.api == "user/get"]  # members were done
    assert await db.fetchval("SELECT count(*) FROM follows") == 600


async def test_a_second_sync_of_the_same_app_is_refused_while_one_runs(
    syncing: tuple[Sync, WecomClient],
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """Two runs resuming the same position would write over each other's progress: the
    second is refused at once, and runs normally once the first has ended."""
    sync, _ = syncing
    simulator.state.seed(wecom_app.corp_id, members=1, customers_per_member=10, groups=1)
    app_id = await db.fetchval("SELECT id FROM apps")
    lock = "SELECT {}(hashtext('sync:' || $1::text))"
    await db.execute(lock.format("pg_advisory_lock"), str(app_id))  # a sync elsewhere
    with pytest.raises(SyncBusy):
        await sync.run()
    assert await db.fetchval("SELECT count(*) FROM sync_runs") == 0
    assert simulator.state.calls == []
    await db.execute(lock.format("pg_advisory_unlock"), str(app_id))  # it ended
    assert (await sync.run()).counts["follows"] == 10


async def test_contact_ways_become_channels_once_and_a_pending_one_adopts_its_way(
    syncing: tuple[Sync, WecomClient],
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """Ways made in the console (or by another tool) are imported with their state, from
    2021-07-10 on; twice imports nothing twice; a way whose add_contact_way answer was lost
    (a channel still pending with its state) is adopted by that channel."""
    sync, _ = syncing
    simulator.state.seed(wecom_app.corp_id, members=2, customers_per_member=1, groups=0)
    corp = f"/sim/corps/{wecom_app.corp_id}/contact_ways"
    async with httpx.AsyncClient(base_url=simulator.url, timeout=5) as sim:
        old = (
            await sim.post(
                corp,
                json={
                    "users": ["member000"],
                    "state": "poster_1",
                    "remark": "海报",
                    "created_at": 1_650_000_000,
                },
            )
        ).json()
        new = (await sim.post(corp, json={"users": ["member000", "member001"]})).json()
        too_old = (
            await sim.post(corp, json={"users": ["member000"], "created_at": 1_600_000_000})
        ).json()
    ways = simulator.state.corp(wecom_app.corp_id).contact_ways
    lost = ways[new["config_id"]]
    lost.state = "ch_lostanswer00000"
    app_id = await db.fetchval("SELECT id FROM apps")
    pending = await db.fetchval(
        "INSERT INTO channels (app_id, corp_id, kind, name, state, status, source)"
        " VALUES ($1, $2, 'contact_way', '门店B', 'ch_lostanswer00000', 'pending', 'api')"
        " RETURNING id",
        app_id,
        wecom_app.corp_id,
    )

    first = await sync.run()
    assert first.counts["channels"] == 2
    query = (
        "SELECT id, name, state, status, source, config_id, qr_code, userids FROM channels"
        " ORDER BY id"
    )
    rows = [dict(r) for r in await db.fetch(query)]
    assert [(r["id"], r["status"], r["source"], r["config_id"]) for r in rows] == [
        (pending, "active", "api", new["config_id"]),
        (rows[1]["id"], "active", "imported", old["config_id"]),
    ]
    assert rows[0]["userids"] == ["member000", "member001"]
    assert (rows[1]["name"], rows[1]["state"], rows[1]["qr_code"]) == (
        "海报",
        "poster_1",
        old["qr_code"],
    )
    assert too_old["config_id"] not in {r["config_id"] for r in rows}

    ways[old["config_id"]].user = ["member001"]  # changed in the console since
    second = await sync.run()
    assert second.counts["channels"] == 2
    again = [dict(r) for r in await db.fetch(query)]
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    assert again[1]["userids"] == ["member001"]


async def welcome_rule(settings: Settings, text: str) -> None:
    """A default welcome rule, saved as `rules add` saves it."""
    assert settings.database_url
    spec = rule_spec(
        {"kind": "welcome", "name": "默认欢迎语", "match": {}, "content": {"text": text}}
    )
    engine = create_engine(settings.database_url, settings, pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await create_rule(session, spec, media_dir=settings.media_dir)
    finally:
        await engine.dispose()


async def test_after_a_sync_a_welcome_names_the_member_the_customer_added(
    live: httpx.AsyncClient,
    syncing: tuple[Sync, WecomClient],
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """The README's template: no change_contact callback ever named member000, the sync did
    (user/get), so a new customer's welcome says 成员0, not the fallback 我们."""
    sync, _ = syncing
    summary = await sync.run()  # `live` seeded one member, member000 (成员0)
    assert summary.counts["members"] == 1
    await welcome_rule(settings, "你好 {customer_name}，我是{member_name}")

    customer = f"wm{time.time_ns()}"
    async with httpx.AsyncClient(base_url=simulator.url, timeout=5) as sim:
        added = await sim.post(
            f"/sim/corps/{wecom_app.corp_id}/customers",
            json={"userid": "member000", "external_userid": customer, "name": "李雷"},
        )
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id="member000",
            external_user_id=customer,
            state="",
            welcome_code=added.json()["welcome_code"],
        ),
    )
    assert await settled(db, "welcome", customer) == "succeeded"
    sent = [
        c.body["text"]["content"]
        for c in simulator.state.calls
        if c.api == "externalcontact/send_welcome_msg" and c.errcode == 0
    ]
    assert sent == ["你好 李雷，我是成员0"]


async def test_a_refused_member_api_skips_only_the_members_phase_with_a_note(
    syncing: tuple[Sync, WecomClient],
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """An app WeCom will not show members to (48002) still imports everything else, and says
    why names are missing; one member outside the visible range (60011) is skipped alone."""
    sync, _ = syncing
    simulator.state.seed(wecom_app.corp_id, members=3, customers_per_member=5, groups=2)
    simulator.state.faults = [Fault(api="user/get", errcode=48002)]
    refused = await sync.run()
    assert refused.counts == {"tags": 10, "members": 0, "follows": 15, "groups": 2, "channels": 0}
    assert len(refused.notes) == 1 and "48002" in refused.notes[0]
    assert "members skipped" in refused.notes[0]
    run = await db.fetchrow("SELECT status, error FROM sync_runs WHERE id = $1", refused.run_id)
    assert run is not None and (run["status"], run["error"]) == ("done", None)
    assert await db.fetchval("SELECT count(*) FROM members") == 0

    simulator.state.faults = [Fault(api="user/get", errcode=60011, times=1)]
    partly = await sync.run()
    assert partly.counts["members"] == 2 and partly.counts["follows"] == 15
    assert partly.notes == [
        "1 members not readable (1 answered 60011; 60011: outside the app's visible range)"
    ]
    assert await db.fetchval("SELECT count(*) FROM members WHERE name LIKE '成员%'") == 2
