"""`wecom-hub sim send`: one realistic encrypted callback per scenario, posted to wecom-hub,
or a steady stream of them (--count/--rate)."""

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from app.crypto import WXBizMsgCrypt
from app.simulator.callbacks import add_external_contact, build_callback, event_xml, text_message


@dataclass(frozen=True)
class Scenario:
    """What to say in a callback; unset ids are made up fresh for each callback."""

    user_id: str = "zhangsan"
    customer: str = ""
    state: str = ""
    chat_id: str = ""
    content: str = "你好"
    open_kfid: str = "wkSIMULATED"


def _customer(s: Scenario) -> str:
    return s.customer or f"wm{secrets.token_hex(12)}"


def _contact(change: str) -> Callable[[str, Scenario, str], str]:
    def build(corp_id: str, s: Scenario, welcome_code: str) -> str:
        return event_xml(
            corp_id,
            "change_external_contact",
            {"ChangeType": change, "UserID": s.user_id, "ExternalUserID": _customer(s)},
        )

    return build


def _group(detail: str, scene_field: str) -> Callable[[str, Scenario, str], str]:
    def build(corp_id: str, s: Scenario, welcome_code: str) -> str:
        return event_xml(
            corp_id,
            "change_external_chat",
            {
                "ChatId": s.chat_id or "wrSIMULATEDGROUP",
                "ChangeType": "update",
                "UpdateDetail": detail,
                scene_field: "3" if detail == "add_member" else "0",
                "MemChangeCnt": "1",
                "MemChangeList": [_customer(s)],
            },
        )

    return build


SCENARIOS: dict[str, Callable[[str, Scenario, str], str]] = {
    "add-customer": lambda corp, s, code: add_external_contact(
        corp_id=corp,
        user_id=s.user_id,
        external_user_id=_customer(s),
        state=s.state,
        welcome_code=code,
    ),
    "edit-customer": _contact("edit_external_contact"),
    "customer-deletes-member": _contact("del_follow_user"),
    "member-deletes-customer": _contact("del_external_contact"),
    "create-group": lambda corp, s, code: event_xml(
        corp,
        "change_external_chat",
        {"ChatId": s.chat_id or "wrSIMULATEDGROUP", "ChangeType": "create"},
    ),
    "join-group": _group("add_member", "JoinScene"),
    "leave-group": _group("del_member", "QuitScene"),
    "tag-change": lambda corp, s, code: event_xml(
        corp, "change_external_tag", {"Id": "etSIMULATED", "TagType": "tag", "ChangeType": "update"}
    ),
    "message": lambda corp, s, code: text_message(
        corp_id=corp, from_user=s.user_id, content=s.content, msg_id=str(time.time_ns())
    ),
    "kf-message": lambda corp, s, code: event_xml(
        corp, "kf_msg_or_event", {"Token": secrets.token_urlsafe(24), "OpenKfId": s.open_kfid}
    ),
}


@dataclass(frozen=True)
class Target:
    hub_url: str  # e.g. http://127.0.0.1:8000/callback/shop
    crypt: WXBizMsgCrypt
    sim_url: str | None = None  # when set, new customers are registered there first


async def send_one(http: httpx.AsyncClient, target: Target, name: str, scenario: Scenario) -> str:
    """Send one callback; the hub's answer body."""
    corp_id = target.crypt.receive_id.decode()
    welcome_code = ""
    if name == "add-customer":
        customer = _customer(scenario)
        scenario = Scenario(**{**vars(scenario), "customer": customer})
        if target.sim_url:
            answer = await http.post(
                f"{target.sim_url}/sim/corps/{corp_id}/customers",
                json={
                    "userid": scenario.user_id,
                    "external_userid": customer,
                    "state": scenario.state,
                },
            )
            answer.raise_for_status()
            welcome_code = answer.json()["welcome_code"]
    callback = build_callback(target.crypt, SCENARIOS[name](corp_id, scenario, welcome_code))
    response = await http.post(target.hub_url, params=callback.params, content=callback.body)
    return f"{response.status_code} {response.text}"


async def send_many(
    target: Target,
    name: str,
    scenario: Scenario,
    *,
    count: int,
    rate: float,
    report: Callable[[str], None] = print,
) -> None:
    """`count` callbacks at `rate` per second, each its own occurrence (fresh ids)."""
    async with httpx.AsyncClient(timeout=10) as http:
        started = time.monotonic()
        tasks = []
        for index in range(count):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send_one(http, target, name, scenario)))
        answers = await asyncio.gather(*tasks, return_exceptions=True)
    ok = sum(1 for a in answers if isinstance(a, str) and a.endswith("success"))
    elapsed = time.monotonic() - started
    report(f"sent {count} {name} callbacks in {elapsed:.1f} s: {ok} answered success")
