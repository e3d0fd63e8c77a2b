"""Churn alerts (流失提醒), end to end: a customer deletes a member, the member (and the
rule's `notify` list) get one app message through message/send; never when the member
deleted the customer. WeCom is the simulator; rules are saved as `rules add` saves them."""

import dataclasses
import json
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from app.automations.churn import choose_churn
from app.automations.store import LoadedRule, validate
from app.config import Settings
from app.errors import Invalid
from app.simulator.callbacks import event_xml
from tests.conftest import RegisteredApp, Simulator, random_app, register
from tests.processing_helpers import deliver, settled, wait_for
from tests.test_automations import action_of, new_customer, rule
from tests.test_kf import sent

AGENT_ID = 1000002


def deletion(app: RegisteredApp, change: str, customer: str, user_id: str = "zhangsan") -> str:
    """del_follow_user (the customer deleted the member) or del_external_contact (the
    member deleted the customer), as WeCom sends it."""
    fields = {"ChangeType": change, "UserID": user_id, "ExternalUserID": customer}
    return event_xml(app.corp_id, "change_external_contact", fields)


async def all_processed(db: asyncpg.Connection, count: int) -> None:
    """Every stored event processed, so every action they cause exists (the same
    transaction writes both)."""

    async def done() -> bool:
        counts = await db.fetchrow(
            "SELECT count(*) AS stored, count(*) FILTER (WHERE status = 'processed') AS done"
            " FROM events"
        )
        assert counts is not None
        return bool(counts["stored"] == counts["done"] == count)

    await wait_for(done)


async def churn_actions(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM actions WHERE kind = 'churn_alert' ORDER BY id")


async def test_a_churn_alerts_the_member_and_the_notify_list_once(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """A second app of the same corp receives the same change (WeCom sends it to every app
    with customer-contact rights), and WeCom repeats the callback: still one message."""
    second = dataclasses.replace(random_app("crm"), corp_id=wecom_app.corp_id)
    simulator.state.corp(wecom_app.corp_id).secrets.add(second.secret)
    await register(settings, second)
    await db.execute("UPDATE apps SET agent_id = $1", AGENT_ID)
    await db.execute(
        "INSERT INTO members (corp_id, userid, name) VALUES ($1, 'zhangsan', '张三')",
        wecom_app.corp_id,
    )
    await rule(
        settings,
        "churn",
        {"state": "store_", "state_mode": "prefix"},
        {
            "text": "{customer_name}（{state}，{added_date} 添加）删除了{member_name}",
            "notify": ["lisi", "zhangsan", "lisi"],
        },
    )
    customer = await new_customer(live, wecom_app, simulator, "store_sh", name="王小明")
    await settled(db, "enrich_contact", customer)  # the name is known before the churn

    churn = deletion(wecom_app, "del_follow_user", customer)
    for app in (wecom_app, wecom_app, second):
        await deliver(live, app, churn)
    await all_processed(db, 3)  # the add, and the churn once per app
    await settled(db, "churn_alert", customer)

    [action] = await churn_actions(db)
    assert action["status"] == "succeeded", action["reason"]
    assert "msgid" in action["reason"]
    added_at = await db.fetchval("SELECT added_at FROM follows")
    added = added_at.astimezone(ZoneInfo("Asia/Shanghai")).date().isoformat()
    [message] = sent(simulator, "message/send")
    assert message == {
        "touser": "zhangsan|lisi",
        "msgtype": "text",
        "agentid": AGENT_ID,
        "text": {"content": f"王小明（store_sh，{added} 添加）删除了张三"},
    }


async def test_a_member_deleting_the_customer_alerts_nobody(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    await db.execute("UPDATE apps SET agent_id = $1", AGENT_ID)
    await rule(settings, "churn", {}, {"text": "{customer_name} 删除了你"})
    customer = await new_customer(live, wecom_app, simulator, "store_sh")
    await deliver(live, wecom_app, deletion(wecom_app, "del_external_contact", customer))
    await all_processed(db, 2)
    assert await db.fetchval("SELECT status FROM follows") == "deleted_by_member"
    assert await churn_actions(db) == []
    assert sent(simulator, "message/send") == []


async def test_a_churn_no_rule_matches_makes_no_action(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    """Most churns of most corps match no rule: no action, rather than a `skipped` row for
    each that would bury the ones that matter."""
    await db.execute("UPDATE apps SET agent_id = $1", AGENT_ID)
    await rule(settings, "churn", {"state": "expo"}, {"text": "展会客户流失"})
    await rule(settings, "churn", {"members": ["lisi"]}, {"text": "李四的客户流失"})
    customer = await new_customer(live, wecom_app, simulator, "store_sh")
    await deliver(live, wecom_app, deletion(wecom_app, "del_follow_user", customer))
    await all_processed(db, 2)
    assert await db.fetchval("SELECT status FROM follows") == "deleted_by_customer"
    assert await churn_actions(db) == []
    assert sent(simulator, "message/send") == []


async def test_without_an_agent_id_the_alert_is_skipped_saying_why(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    rule_id = await rule(settings, "churn", {}, {"text": "{customer_name} 删除了你"})
    customer = await new_customer(live, wecom_app, simulator, "")
    await deliver(live, wecom_app, deletion(wecom_app, "del_follow_user", customer))
    await all_processed(db, 2)
    skipped = await action_of(db, "churn_alert", customer)
    assert skipped is not None
    assert skipped["status"] == "skipped"
    assert "no agent_id" in skipped["reason"]
    assert json.loads(skipped["payload"])["rule_id"] == rule_id
    assert sent(simulator, "message/send") == []


@pytest.mark.parametrize(
    ("match", "content", "field", "problem"),
    [
        ({}, {"text": "{customer_name:>300000000}"}, "content.text", "has a format spec"),
        ({}, {"text": "{added_date!r}"}, "content.text", "has a conversion"),
        ({}, {"text": "hi", "notify": ["u"] * 101}, "content.notify", "at most 100"),
        ({}, {"text": "长" * 700}, "content.text", "2100 bytes; WeCom allows 2048"),
        ({"tags": ["etNOSUCHTAG"]}, {"text": "hi"}, "match.tags", "unknown tag id"),
        ({"state": "(", "state_mode": "regex"}, {"text": "hi"}, "match", "bad regular"),
    ],
)
async def test_a_churn_rule_is_refused_when_saved_saying_where(
    settings: Settings,
    db: asyncpg.Connection,
    match: dict[str, Any],
    content: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    with pytest.raises(Invalid) as refused:
        await rule(settings, "churn", match, content)
    [said] = refused.value.errors
    assert (said.field, problem in said.message) == (field, True), said
    assert await db.fetchval("SELECT count(*) FROM rules") == 0


def loaded(rule_id: int, match: dict[str, Any], priority: int = 0) -> LoadedRule:
    parsed_match, content = validate("churn", match, {"text": f"rule {rule_id}"})
    return LoadedRule(rule_id, f"rule {rule_id}", priority, parsed_match, content)


RULES = [
    loaded(1, {}),
    loaded(2, {"tags": ["etVIP", "etGOLD"]}),
    loaded(3, {"members": ["zhangsan"]}),
    loaded(4, {"state": "store_", "state_mode": "prefix"}),
    loaded(5, {"state": "store_sh"}),
    loaded(6, {"state": "store_sh"}, priority=1),
    loaded(7, {"state": "store_sh", "members": ["lisi"]}),
]


@pytest.mark.parametrize(
    ("state", "user_id", "tag_ids", "chosen"),
    [
        ("store_sh", "zhangsan", [], 6),  # exact beats prefix and member; priority among equals
        ("store_sh", "lisi", [], 7),  # an exact channel and its member
        ("store_bj", "zhangsan", ["etVIP"], 4),
        (None, "zhangsan", ["etGOLD"], 3),  # a member beats a tag
        (None, "wangwu", ["etOTHER", "etGOLD"], 2),  # any one of the rule's tags
        (None, "wangwu", ["etOTHER"], 1),
        ("", "wangwu", [], 1),  # no channel: only rules without a state
    ],
)
def test_the_most_specific_rule_is_chosen(
    state: str | None, user_id: str, tag_ids: list[str], chosen: int
) -> None:
    found = choose_churn(RULES, state=state, user_id=user_id, tag_ids=tag_ids)
    assert found is not None and found.id == chosen
