"""The whole loop on real parts: callbacks over HTTP into the service, processing in the
background, enrichment calls to the simulator over HTTP, state in Postgres."""

import asyncpg
import httpx

from app.simulator.callbacks import add_external_contact, event_xml
from app.simulator.state import Contact, Fault
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, wait_for


async def test_new_customer_is_enriched_from_the_api(
    live: httpx.AsyncClient,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    corp = simulator.state.corp(wecom_app.corp_id)
    tag_id = next(iter(corp.tag_groups.values()))["tag"][0]["id"]
    corp.contacts["wmA"] = Contact(
        "wmA",
        "王小明",
        gender=1,
        follows={
            "zhangsan": {
                "userid": "zhangsan",
                "remark": "老客户",
                "description": "",
                "createtime": 1_700_000_000,
                "tag_id": [tag_id],
                "state": "spring",
                "add_way": 1,
                "oper_userid": "wmA",
            }
        },
    )
    await deliver(
        live,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id="wmA", state="spring"
        ),
    )

    async def enriched() -> bool:
        return bool(
            await db.fetchval("SELECT status FROM actions WHERE kind = 'enrich_contact'")
            == "succeeded"
        )

    await wait_for(enriched)
    contact = await db.fetchrow("SELECT name, gender, enriched_at FROM external_contacts")
    assert contact is not None and (contact["name"], contact["gender"]) == ("王小明", 1)
    follow = await db.fetchrow("SELECT status, remark, tag_ids, state FROM follows")
    assert follow is not None
    assert tuple(follow) == ("active", "老客户", [tag_id], "spring")

    async def recorded() -> bool:  # calls are recorded in the background
        query = "SELECT count(*) FROM api_calls WHERE api = 'externalcontact/get'"
        return bool(await db.fetchval(query) == 1)

    await wait_for(recorded)


async def test_group_and_tag_events_are_enriched(
    live: httpx.AsyncClient,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    chat_id = next(iter(simulator.state.corp(wecom_app.corp_id).groups))
    await deliver(
        live,
        wecom_app,
        event_xml(
            wecom_app.corp_id, "change_external_chat", {"ChatId": chat_id, "ChangeType": "create"}
        ),
    )
    await deliver(
        live,
        wecom_app,
        event_xml(
            wecom_app.corp_id,
            "change_external_tag",
            {"Id": "etX", "TagType": "tag", "ChangeType": "create"},
        ),
    )

    async def done() -> bool:
        statuses = [
            r[0]
            for r in await db.fetch(
                "SELECT status FROM actions WHERE kind IN ('enrich_group', 'sync_tags')"
            )
        ]
        return len(statuses) == 2 and set(statuses) == {"succeeded"}

    await wait_for(done)
    group = await db.fetchrow("SELECT name, owner FROM customer_groups")
    assert group is not None and group["name"] == "客户群0"
    assert await db.fetchval("SELECT count(*) FROM group_members WHERE chat_id = $1", chat_id) == 1
    assert await db.fetchval("SELECT count(*) FROM tags WHERE deleted_at IS NULL") == 3


async def test_enrichment_failure_is_visible_and_blocks_nothing(
    live: httpx.AsyncClient,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    simulator.state.faults = [Fault(api="externalcontact/get", errcode=48002)]
    await deliver(
        live,
        wecom_app,
        add_external_contact(corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id="wmB"),
    )

    async def failed() -> bool:
        return bool(
            await db.fetchval("SELECT status FROM actions WHERE kind = 'enrich_contact'")
            == "failed"
        )

    await wait_for(failed)
    action = await db.fetchrow(
        "SELECT error_code, error_message, attempts FROM actions WHERE kind = 'enrich_contact'"
    )
    assert action is not None and (action["error_code"], action["attempts"]) == ("wecom.48002", 1)
    assert action["error_message"]  # WeCom's errmsg, kept for the operator
    attempts = await db.fetch("SELECT outcome, error_code FROM action_attempts")
    assert [(a["outcome"], a["error_code"]) for a in attempts] == [("failed", "wecom.48002")]
    assert await db.fetchval("SELECT status FROM events") == "processed"
    assert await db.fetchval("SELECT status FROM follows") == "active"


async def test_transient_enrichment_failure_is_retried_later(
    live: httpx.AsyncClient,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    simulator.state.corp(wecom_app.corp_id).contacts["wmC"] = Contact("wmC", "赵六")
    # More -1 answers than one call's own retries absorb: the action must come back later.
    simulator.state.faults = [Fault(api="externalcontact/get", errcode=-1, times=5)]
    await deliver(
        live,
        wecom_app,
        add_external_contact(corp_id=wecom_app.corp_id, user_id="zhangsan", external_user_id="wmC"),
    )

    async def succeeded() -> bool:
        return bool(
            await db.fetchval("SELECT status FROM actions WHERE kind = 'enrich_contact'")
            == "succeeded"
        )

    await wait_for(succeeded, within=20)
    assert await db.fetchval("SELECT attempts FROM actions WHERE kind = 'enrich_contact'") == 2
    assert await db.fetchval("SELECT name FROM external_contacts") == "赵六"
