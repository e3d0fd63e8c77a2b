"""`wecom-hub sim send`: one realistic encrypted callback per scenario, posted to wecom-hub,
or a steady stream of them (--count/--rate); `wecom-hub sim scan`: a WeChat user scans a
联系我 code, and the add_external_contact callback (with the way's State) follows.

WeCom knows what a callback reports before it sends it: a new customer has a welcome_code, a
group its new member, a 微信客服 account the message it announces. So before each callback
the simulator is told the same, and the calls wecom-hub then makes find what the callback
said (no 40050 for an unknown group, no 95004 for an unknown account).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from app.simulator.callbacks import add_external_contact, build_callback, event_xml, text_message

if TYPE_CHECKING:
    import httpx

    from app.crypto import WXBizMsgCrypt

DEFAULT_CHAT_ID = "wrSIMULATEDGROUP"


@dataclass(frozen=True)
class Scenario:
    """What to say in a callback; unset ids are made up fresh for each callback."""

    user_id: str = "zhangsan"
    customer: str = ""
    state: str = ""
    chat_id: str = ""
    content: str = "你好"
    open_kfid: str = "wkSIMULATED"


# Each scenario's callback, from the corp, the scenario and what the simulator issued for it
# (a welcome_code, a 微信客服 Token; "" when nothing was issued).
Build = Callable[[str, Scenario, str], str]


def _customer(s: Scenario) -> str:
    return s.customer or f"wm{secrets.token_hex(12)}"


def _contact(change: str) -> Build:
    def build(corp_id: str, s: Scenario, issued: str) -> str:
        return event_xml(
            corp_id,
            "change_external_contact",
            {"ChangeType": change, "UserID": s.user_id, "ExternalUserID": _customer(s)},
        )

    return build


def _group(detail: str, scene_field: str) -> Build:
    def build(corp_id: str, s: Scenario, issued: str) -> str:
        return event_xml(
            corp_id,
            "change_external_chat",
            {
                "ChatId": s.chat_id or DEFAULT_CHAT_ID,
                "ChangeType": "update",
                "UpdateDetail": detail,
                scene_field: "3" if detail == "add_member" else "0",
                "MemChangeCnt": "1",
                "MemChangeList": [_customer(s)],
            },
        )

    return build


SCENARIOS: dict[str, Build] = {
    "add-customer": lambda corp, s, issued: add_external_contact(
        corp_id=corp,
        user_id=s.user_id,
        external_user_id=_customer(s),
        state=s.state,
        welcome_code=issued,
    ),
    "edit-customer": _contact("edit_external_contact"),
    "customer-deletes-member": _contact("del_follow_user"),
    "member-deletes-customer": _contact("del_external_contact"),
    "create-group": lambda corp, s, issued: event_xml(
        corp,
        "change_external_chat",
        {"ChatId": s.chat_id or DEFAULT_CHAT_ID, "ChangeType": "create"},
    ),
    "join-group": _group("add_member", "JoinScene"),
    "leave-group": _group("del_member", "QuitScene"),
    "tag-change": lambda corp, s, issued: event_xml(
        corp, "change_external_tag", {"Id": "etSIMULATED", "TagType": "tag", "ChangeType": "update"}
    ),
    "message": lambda corp, s, issued: text_message(
        corp_id=corp, from_user=s.user_id, content=s.content, msg_id=str(time.time_ns())
    ),
    "kf-message": lambda corp, s, issued: event_xml(
        corp,
        "kf_msg_or_event",
        {"Token": issued or secrets.token_urlsafe(24), "OpenKfId": s.open_kfid},
    ),
}
# Group scenarios: who joins and who leaves, as the simulator is told.
_GROUP_CHANGES = {
    "create-group": (False, False),
    "join-group": (True, False),
    "leave-group": (False, True),
}


@dataclass(frozen=True)
class Target:
    hub_url: str  # e.g. http://127.0.0.1:8000/callback/shop
    crypt: WXBizMsgCrypt
    sim_url: str | None = None  # when set, the simulator is told first what a callback says


class SendFailed(Exception):
    """A callback that could not be delivered, or was refused; the message says which."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: str

    @property
    def passive_reply(self) -> bool:
        """A 200 whose body is an encrypted reply (a reply rule answered), not "success"."""
        return self.status == 200 and self.body != "success"

    def __str__(self) -> str:
        return f"{self.status} {self.body}"


async def _tell_simulator(
    http: httpx.AsyncClient, sim_url: str, corp_id: str, name: str, s: Scenario
) -> str:
    """What WeCom knows before it sends callback `name`, told to the simulator; what the
    simulator issued for the callback (a welcome_code, a Token), or ""."""
    corp = f"{sim_url}/sim/corps/{corp_id}"
    if name == "add-customer":
        customer = {"userid": s.user_id, "external_userid": s.customer, "state": s.state}
        return await _post(http, f"{corp}/customers", customer, "welcome_code")
    if name == "kf-message":
        message = {"external_userid": s.customer, "content": s.content}
        return await _post(http, f"{corp}/kf/{s.open_kfid}/messages", message, "token")
    if name in _GROUP_CHANGES:
        joins, leaves = _GROUP_CHANGES[name]
        change = {
            "owner": s.user_id,
            "joined": [s.customer] if joins else [],
            "left": [s.customer] if leaves else [],
        }
        await _post(http, f"{corp}/groups/{s.chat_id}", change, "chat_id")
    if name in ("customer-deletes-member", "member-deletes-customer"):
        # no longer friends: a mass message of that member's now reaches them with status 2
        gone = await http.delete(f"{corp}/customers/{s.customer}/follows/{s.user_id}")
        if gone.status_code != 200:
            raise SendFailed(f"the simulator refused {gone.url}: {gone.status_code} {gone.text}")
    return ""


async def _post(http: httpx.AsyncClient, url: str, body: Mapping[str, object], key: str) -> str:
    """POST to the simulator; `key` of its answer."""
    return str((await _answer(http, url, body))[key])


async def _answer(http: httpx.AsyncClient, url: str, body: Mapping[str, object]) -> Any:
    """POST to the simulator's control; its answer, or SendFailed if it refuses."""
    answer = await http.post(url, json=body)
    if answer.status_code != 200:
        raise SendFailed(f"the simulator refused {url}: {answer.status_code} {answer.text}")
    return answer.json()


def _unanswered(sim_url: str, exc: Exception) -> SendFailed:
    return SendFailed(
        f"the simulator at {sim_url} did not answer ({exc!r}): start it with "
        "`wecom-hub sim serve`, or name it with --sim"
    )


async def send_one(
    http: httpx.AsyncClient, target: Target, name: str, scenario: Scenario
) -> Answer:
    """Send one callback (telling the simulator first, when there is one); the hub's answer."""
    import httpx  # here, not at the top: `wecom-hub --help` lists the scenarios, quickly

    scenario = replace(
        scenario,
        customer=_customer(scenario),
        chat_id=scenario.chat_id or DEFAULT_CHAT_ID,
    )
    corp_id = target.crypt.receive_id.decode()
    issued = ""
    if target.sim_url:
        try:
            issued = await _tell_simulator(http, target.sim_url, corp_id, name, scenario)
        except httpx.TransportError as exc:
            raise _unanswered(target.sim_url, exc) from None
    return await deliver(http, target, SCENARIOS[name](corp_id, scenario, issued))


async def deliver(http: httpx.AsyncClient, target: Target, message_xml: str) -> Answer:
    """Seal `message_xml` with the app's keys and post it to wecom-hub, as WeCom does."""
    import httpx

    callback = build_callback(target.crypt, message_xml)
    try:
        response = await http.post(target.hub_url, params=callback.params, content=callback.body)
    except httpx.TransportError as exc:
        raise SendFailed(
            f"wecom-hub at {target.hub_url} did not answer ({exc!r}): is `wecom-hub serve` "
            "running there? (--hub names it)"
        ) from None
    if response.status_code != 200:
        raise SendFailed(f"wecom-hub answered {response.status_code}: {response.text}")
    return Answer(response.status_code, response.text)


@dataclass(frozen=True)
class Scanned:
    """Who scanned which member's code, with the way's state and the welcome_code issued."""

    external_userid: str
    userid: str
    state: str
    welcome_code: str


async def scan(
    http: httpx.AsyncClient, target: Target, config_id: str, *, customer: str = ""
) -> tuple[Scanned, Answer]:
    """A WeChat user scans contact way `config_id` in the simulator (which adds them to one
    of its members), then the add_external_contact callback that WeCom sends for it."""
    import httpx

    if not target.sim_url:
        raise SendFailed("a scan needs the simulator (--sim)")
    corp_id = target.crypt.receive_id.decode()
    url = f"{target.sim_url}/sim/corps/{corp_id}/contact_ways/{config_id}/scan"
    try:
        said = await _answer(http, url, {"external_userid": customer or None})
    except httpx.TransportError as exc:
        raise _unanswered(target.sim_url, exc) from None
    scanned = Scanned(
        external_userid=said["external_userid"],
        userid=said["userid"],
        state=said["state"],
        welcome_code=said["welcome_code"],
    )
    message = add_external_contact(
        corp_id=corp_id,
        user_id=scanned.userid,
        external_user_id=scanned.external_userid,
        state=scanned.state,
        welcome_code=scanned.welcome_code,
    )
    return scanned, await deliver(http, target, message)


@dataclass
class Summary:
    """What happened to a batch of callbacks: answered, with a passive reply, failed (why)."""

    name: str
    sent: int = 0
    answered: int = 0
    replies: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        text = f"sent {self.sent} {self.name} callbacks in {self.seconds:.1f} s: "
        text += f"{self.answered} answered 200"
        if self.replies:
            text += f" ({self.replies} with a passive reply)"
        for reason, times in self.failures.most_common(3):
            text += f"; {times} failed: {reason}"
        return text


async def send_many(
    target: Target, name: str, scenario: Scenario, *, count: int, rate: float
) -> Summary:
    """`count` callbacks at `rate` per second, each its own occurrence (fresh ids)."""
    import httpx

    summary = Summary(name, sent=count)
    async with httpx.AsyncClient(timeout=10) as http:
        started = time.monotonic()
        tasks = []
        for index in range(count):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send_one(http, target, name, scenario)))
        answers = await asyncio.gather(*tasks, return_exceptions=True)
    summary.seconds = time.monotonic() - started
    for answer in answers:
        if isinstance(answer, SendFailed):
            summary.failures[str(answer)] += 1
        elif isinstance(answer, BaseException):
            raise answer
        else:
            summary.answered += 1
            summary.replies += answer.passive_reply
    return summary
