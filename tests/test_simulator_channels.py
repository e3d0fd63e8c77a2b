"""The simulator keeps WeCom's rules for 联系我, 加入群聊 and 群发: errcodes, overwriting
updates, list windows and paging, the shared quota, the distributing delay, the receive limit,
reminders and cancellation, and faults that strike after WeCom acted. Over real HTTP, as
wecom-hub's channels and broadcasts tests will use it."""

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from defusedxml import ElementTree
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from typer.testing import CliRunner

from app.crypto import WXBizMsgCrypt
from app.simulator.cli import sim_cli
from app.simulator.state import Contact, Corp, SimApp
from tests.conftest import RegisteredApp, Simulator, random_app
from tests.process_helpers import wait_until

CORP, SECRET = "wwsimchannels00001", "secret-of-the-channels-corp"
M0, M1, M2 = "member000", "member001", "member002"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Wecom:
    """WeCom's API as a caller sees it (errcode in the body), and the simulator's control."""

    http: httpx.Client
    token: str
    corp: Corp

    def __call__(self, api: str, **body: Any) -> dict[str, Any]:
        answer = self.http.post(f"/cgi-bin/{api}", params={"access_token": self.token}, json=body)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def ok(self, api: str, **body: Any) -> dict[str, Any]:
        result = self(api, **body)
        assert result["errcode"] == 0, result
        return result

    def errcode(self, api: str, **body: Any) -> int:
        return int(self(api, **body)["errcode"])

    def control(self, method: str, path: str, **json: Any) -> Any:
        answer = self.http.request(method, f"/sim/corps/{CORP}{path}", json=json or None)
        answer.raise_for_status()
        return answer.json()

    def limits(self, **limits: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.control("PUT", "/limits", **limits)
        return result


@pytest.fixture
def wecom(simulator: Simulator) -> Iterator[Wecom]:
    """A corp of three members with two customers each and three groups (one per owner);
    mass messages readable at once unless a test says otherwise."""
    simulator.state.corp(CORP).secrets.add(SECRET)
    simulator.state.seed(CORP, members=3, customers_per_member=2, groups=3, tags=2)
    with httpx.Client(base_url=simulator.url, timeout=5) as http:
        token = http.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET}).json()[
            "access_token"
        ]
        wecom = Wecom(http, token, simulator.state.corp(CORP))
        wecom.limits(distributing_seconds=0)
        yield wecom


def customers_of(corp: Corp, userid: str) -> list[str]:
    return [c.external_userid for c in corp.contacts.values() if userid in c.follows]


# 联系我 ----------------------------------------------------------------------------------


def test_add_contact_way_answers_wecoms_errcodes(wecom: Wecom) -> None:
    # exactly 30 characters, a mini-program style, the whole corp as department 1: all fine
    wecom.ok("externalcontact/add_contact_way", type=2, scene=1, style=2, state="s" * 30, party=[1])
    many = [f"extra{i:03d}" for i in range(101)]
    wecom.corp.members.extend(many)
    cases: list[tuple[dict[str, Any], int]] = [
        ({"scene": 2, "user": [M0]}, 41037),
        ({"type": 3, "scene": 2, "user": [M0]}, 41039),
        ({"type": 1, "user": [M0]}, 41038),
        ({"type": 1, "scene": 3, "user": [M0]}, 41040),
        ({"type": 1, "scene": 2, "style": 1, "user": [M0]}, 41040),
        ({"type": 2, "scene": 1, "style": 3, "user": [M0]}, 41042),
        ({"type": 1, "scene": 2, "state": "s" * 31, "user": [M0]}, 40058),
        ({"type": 1, "scene": 2, "remark": "r" * 31, "user": [M0]}, 40058),
        ({"type": 1, "scene": 2, "user": [M0, M1]}, 40058),
        ({"type": 2, "scene": 2, "user": many}, 41041),
        ({"type": 2, "scene": 2, "party": [1]}, 41041),  # the corp now has 104 members
        ({"type": 2, "scene": 2, "user": [M0, "nobody"]}, 60011),
        ({"type": 2, "scene": 2, "party": [2]}, 60011),
    ]
    for body, errcode in cases:
        assert wecom.errcode("externalcontact/add_contact_way", **body) == errcode, body
    assert len(wecom.corp.contact_ways) == 1


def test_a_qr_way_has_a_png_served_by_the_simulator(wecom: Wecom, simulator: Simulator) -> None:
    first = wecom.ok("externalcontact/add_contact_way", type=1, scene=2, user=[M0])
    second = wecom.ok("externalcontact/add_contact_way", type=1, scene=2, user=[M1])
    button = wecom.ok("externalcontact/add_contact_way", type=1, scene=1, user=[M0])
    assert "qr_code" not in button
    assert first["qr_code"] == f"{simulator.url}/sim/qr/{first['config_id']}.png"
    images = [httpx.get(way["qr_code"]) for way in (first, second)]
    for image in images:
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert image.content.startswith(PNG_SIGNATURE)
    assert images[0].content != images[1].content
    wecom.ok("externalcontact/del_contact_way", config_id=first["config_id"])
    assert httpx.get(first["qr_code"]).status_code == 404


def test_get_update_and_delete_a_contact_way(wecom: Wecom) -> None:
    added = wecom.ok(
        "externalcontact/add_contact_way",
        type=2,
        scene=2,
        user=[M0, M1],
        state="spring",
        remark="春季",
    )
    config_id = added["config_id"]
    way = wecom.ok("externalcontact/get_contact_way", config_id=config_id)["contact_way"]
    assert way | {"qr_code": ""} == {
        "config_id": config_id,
        "type": 2,
        "scene": 2,
        "remark": "春季",
        "skip_verify": True,
        "state": "spring",
        "qr_code": "",
        "user": [M0, M1],
        "party": [],
        "is_temp": False,
    }
    assert way["qr_code"] == added["qr_code"]

    wecom.ok("externalcontact/update_contact_way", config_id=config_id, user=[M2])
    way = wecom.ok("externalcontact/get_contact_way", config_id=config_id)["contact_way"]
    assert (way["user"], way["state"], way["remark"]) == ([M2], "spring", "春季")
    wecom.ok(
        "externalcontact/update_contact_way",
        config_id=config_id,
        party=[1],
        state="summer",
        skip_verify=False,
    )
    way = wecom.ok("externalcontact/get_contact_way", config_id=config_id)["contact_way"]
    assert (way["user"], way["party"], way["state"], way["skip_verify"]) == (
        [M2],
        [1],
        "summer",
        False,
    )

    refused: list[tuple[dict[str, Any], int]] = [
        ({"user": ["nobody"], "state": "autumn"}, 60011),
        ({"style": 1}, 41040),  # a QR code has no style
        ({"state": "s" * 31}, 40058),
    ]
    for change, errcode in refused:
        assert (
            wecom.errcode("externalcontact/update_contact_way", config_id=config_id, **change)
            == errcode
        )
    way = wecom.ok("externalcontact/get_contact_way", config_id=config_id)["contact_way"]
    assert (way["user"], way["state"]) == ([M2], "summer")  # a refused update changed nothing

    for api in ("get_contact_way", "update_contact_way", "del_contact_way"):
        assert wecom.errcode(f"externalcontact/{api}", config_id="nosuch") == 41044
        assert wecom.errcode(f"externalcontact/{api}") == 41043
    wecom.ok("externalcontact/del_contact_way", config_id=config_id)
    assert wecom.errcode("externalcontact/get_contact_way", config_id=config_id) == 41044
    assert wecom.errcode("externalcontact/del_contact_way", config_id=config_id) == 41044


def test_list_contact_way_keeps_the_window_and_pages_in_creation_order(wecom: Wecom) -> None:
    now = int(time.time())
    old = wecom.control(
        "POST", "/contact_ways", users=[M0], state="old", created_at=now - 100 * 86_400
    )
    wecom.control("POST", "/contact_ways", users=[M0], state="2020", created_at=1_600_000_000)
    wecom.ok(
        "externalcontact/add_contact_way", type=1, scene=2, user=[M0], is_temp=True
    )  # temporary: never listed
    made = [
        wecom.ok("externalcontact/add_contact_way", type=1, scene=2, user=[M0], state=f"s{i}")
        for i in range(5)
    ]
    pages: list[list[str]] = []
    cursor = ""
    while True:
        page = wecom.ok("externalcontact/list_contact_way", limit=2, cursor=cursor)
        pages.append([w["config_id"] for w in page["contact_way"]])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == [
        [made[0]["config_id"], made[1]["config_id"]],
        [made[2]["config_id"], made[3]["config_id"]],
        [made[4]["config_id"]],
    ]
    everything = wecom.ok(
        "externalcontact/list_contact_way", start_time=1_500_000_000, end_time=now + 60
    )["contact_way"]
    # the console's way 100 days ago is listed when asked for; the one from 2020 never is
    assert [w["config_id"] for w in everything] == [
        old["config_id"],
        *(w["config_id"] for w in made),
    ]
    imported = wecom.ok("externalcontact/get_contact_way", config_id=old["config_id"])
    assert (imported["contact_way"]["state"], imported["contact_way"]["user"]) == ("old", [M0])
    assert wecom.errcode("externalcontact/list_contact_way", limit=1001) == 40058


def test_the_quota_is_shared_with_join_ways_and_permission_is_needed(wecom: Wecom) -> None:
    chat = next(iter(wecom.corp.groups))
    assert wecom.limits(contact_way_quota=2) == {
        "contact_way_quota": 2,
        "receive_limit": 1,
        "receive_window_seconds": 86_400,
        "distributing_seconds": 0,
        "customer_contact_permission": True,
    }
    wecom.ok("externalcontact/add_contact_way", type=1, scene=2, user=[M0])
    wecom.ok("externalcontact/groupchat/add_join_way", scene=2, chat_id_list=[chat])
    assert wecom.errcode("externalcontact/add_contact_way", type=1, scene=2, user=[M0]) == 41045
    assert (
        wecom.errcode("externalcontact/groupchat/add_join_way", scene=2, chat_id_list=[chat])
        == 41045
    )
    wecom.control("POST", "/contact_ways", users=[M1])  # made in the console: not counted
    wecom.limits(contact_way_quota=3)
    wecom.ok("externalcontact/add_contact_way", type=1, scene=2, user=[M0])

    wecom.limits(customer_contact_permission=False)
    assert wecom.errcode("externalcontact/add_contact_way", type=1, scene=2, user=[M0]) == 84074
    assert wecom.errcode("externalcontact/list_contact_way") == 84074


def test_a_scan_adds_the_customer_to_the_ways_members_in_turn(wecom: Wecom) -> None:
    config_id = wecom.ok(
        "externalcontact/add_contact_way", type=2, scene=2, user=[M1, M2], state="poster"
    )["config_id"]
    scans = [
        wecom.control("POST", f"/contact_ways/{config_id}/scan", name="小王") for _ in range(3)
    ]
    assert [s["userid"] for s in scans] == [M1, M2, M1]
    assert {s["state"] for s in scans} == {"poster"}
    customer = wecom.http.get(
        "/cgi-bin/externalcontact/get",
        params={"access_token": wecom.token, "external_userid": scans[0]["external_userid"]},
    ).json()
    assert customer["external_contact"]["name"] == "小王"
    [follow] = customer["follow_user"]
    assert (follow["userid"], follow["state"], follow["add_way"]) == (M1, "poster", 1)
    welcome = {"welcome_code": scans[0]["welcome_code"], "text": {"content": "欢迎"}}
    wecom.ok("externalcontact/send_welcome_msg", **welcome)
    assert wecom.errcode("externalcontact/send_welcome_msg", **welcome) == 41051
    unknown = wecom.http.post(f"/sim/corps/{CORP}/contact_ways/nosuch/scan", json={})
    assert unknown.status_code == 404


# 加入群聊 --------------------------------------------------------------------------------


def test_join_ways(wecom: Wecom) -> None:
    chats = list(wecom.corp.groups)
    refused: list[tuple[dict[str, Any], int]] = [
        ({"chat_id_list": chats[:1]}, 41038),
        ({"scene": 3, "chat_id_list": chats[:1]}, 41040),
        ({"scene": 2, "chat_id_list": [*chats, "wrA", "wrB", "wrC"]}, 41091),
        ({"scene": 2, "chat_id_list": ["wrNOSUCH"]}, 40050),
        ({"scene": 2, "chat_id_list": chats[:1], "state": "s" * 31}, 40058),
    ]
    for body, errcode in refused:
        assert wecom.errcode("externalcontact/groupchat/add_join_way", **body) == errcode, body
    config_id = wecom.ok(
        "externalcontact/groupchat/add_join_way",
        scene=2,
        chat_id_list=chats[:2],
        remark="r" * 40,
        room_base_name="新群",
        room_base_id=10,
        state="expo",
    )["config_id"]
    way = wecom.ok("externalcontact/groupchat/get_join_way", config_id=config_id)["join_way"]
    assert way["qr_code"].endswith(f"/sim/qr/{config_id}.png")
    assert (
        way | {"qr_code": ""}
        == {
            "config_id": config_id,
            "scene": 2,
            "remark": "r" * 30,  # cut, as WeCom documents
            "auto_create_room": 1,
            "room_base_name": "新群",
            "room_base_id": 10,
            "chat_id_list": chats[:2],
            "qr_code": "",
            "state": "expo",
        }
    )
    wecom.ok(
        "externalcontact/groupchat/update_join_way", config_id=config_id, chat_id_list=[chats[2]]
    )
    way = wecom.ok("externalcontact/groupchat/get_join_way", config_id=config_id)["join_way"]
    assert (way["chat_id_list"], way["state"]) == ([chats[2]], "expo")

    joined = wecom.control("POST", f"/join_ways/{config_id}/join", external_userid="wmJOINER")
    assert joined == {"chat_id": chats[2], "external_userid": "wmJOINER", "state": "expo"}
    group = wecom.ok("externalcontact/groupchat/get", chat_id=chats[2])["group_chat"]
    [member] = [m for m in group["member_list"] if m["userid"] == "wmJOINER"]
    assert (member["type"], member["join_scene"], member["state"]) == (2, 3, "expo")

    wecom.ok("externalcontact/groupchat/del_join_way", config_id=config_id)
    assert wecom.errcode("externalcontact/groupchat/get_join_way", config_id=config_id) == 41044


# 群发 ------------------------------------------------------------------------------------


def add_contact(corp: Corp, external: str, follows: dict[str, int]) -> None:
    """A customer followed by members, each since the given unix time."""
    corp.contacts[external] = Contact(
        external,
        external,
        follows={
            userid: {"userid": userid, "createtime": since, "tag_id": [], "state": ""}
            for userid, since in follows.items()
        },
    )


def test_a_mass_message_makes_one_task_per_member(wecom: Wecom) -> None:
    corp = wecom.corp
    add_contact(corp, "wmBOTH", {M0: 1_700_000_000, M1: 1_700_000_100})  # M1 is more recent
    add_contact(corp, "wmM0", {M0: 1_700_000_000})
    text = {"content": "新品上市"}
    made = wecom.ok(
        "externalcontact/add_msg_template",
        external_userid=["wmBOTH", "wmM0", "wmNOBODY"],
        text=text,
    )
    assert made["fail_list"] == ["wmNOBODY"]
    [template] = wecom.control("GET", "/msg_templates")
    assert (template["msgid"], template["chat_type"], template["text"]) == (
        made["msgid"],
        "single",
        text,
    )
    assert {
        t["userid"]: [r["external_userid"] for r in t["recipients"]] for t in template["tasks"]
    } == {
        M1: ["wmBOTH"],
        M0: ["wmM0"],
    }

    by_sender = wecom.ok(
        "externalcontact/add_msg_template",
        external_userid=["wmBOTH", "wmM0", customers_of(corp, M2)[0]],
        sender=M0,
        text=text,
    )
    assert by_sender["fail_list"] == [customers_of(corp, M2)[0]]
    everyone = wecom.ok("externalcontact/add_msg_template", sender=M2, text=text)
    tasks = wecom.control("GET", "/msg_templates")
    assert [t["userid"] for t in tasks[1]["tasks"]] == [M0]
    assert [r["external_userid"] for r in tasks[2]["tasks"][0]["recipients"]] == customers_of(
        corp, M2
    )
    assert everyone["fail_list"] == []

    groups = [g.chat_id for g in corp.groups.values() if g.owner == M0]
    others = [g.chat_id for g in corp.groups.values() if g.owner != M0]
    to_groups = wecom.ok(
        "externalcontact/add_msg_template",
        chat_type="group",
        sender=M0,
        chat_id_list=groups + others[:1],
        text=text,
    )
    assert to_groups["fail_list"] == others[:1]

    refused: list[tuple[dict[str, Any], int]] = [
        ({"external_userid": ["wmNOBODY"], "text": text}, 41048),
        ({"external_userid": ["wmM0"], "sender": M1, "text": text}, 41048),
        ({"external_userid": ["wmM0"]}, 40058),
        ({"external_userid": ["wmM0"], "text": {"content": "长" * 1334}}, 45002),
        (
            {
                "external_userid": ["wmM0"],
                "attachments": [{"msgtype": "link", "link": {"title": "t", "url": "u"}}] * 10,
            },
            41064,
        ),
        ({"external_userid": ["wmM0"], "attachments": [{"msgtype": "voice", "voice": {}}]}, 41065),
        ({"chat_type": "group", "chat_id_list": groups, "text": text}, 40058),
        ({"sender": "nobody", "text": text}, 60011),
    ]
    for body, errcode in refused:
        assert wecom.errcode("externalcontact/add_msg_template", **body) == errcode, body
    assert len(wecom.control("GET", "/msg_templates")) == 4


def test_reads_answer_41063_while_distributing_then_succeed(wecom: Wecom) -> None:
    wecom.limits(distributing_seconds=0.5)
    msgid = wecom.ok("externalcontact/add_msg_template", sender=M0, text={"content": "hi"})["msgid"]
    now = int(time.time())
    window = {"chat_type": "single", "start_time": now - 60, "end_time": now + 60}
    assert wecom.errcode("externalcontact/get_groupmsg_task", msgid=msgid) == 41063
    assert (
        wecom.errcode("externalcontact/get_groupmsg_send_result", msgid=msgid, userid=M0) == 41063
    )
    assert wecom.errcode("externalcontact/get_groupmsg_list_v2", **window) == 41063
    assert wait_until(
        lambda: wecom.errcode("externalcontact/get_groupmsg_task", msgid=msgid) == 0, 5
    )
    tasks = wecom.ok("externalcontact/get_groupmsg_task", msgid=msgid)
    assert tasks["task_list"] == [{"userid": M0, "status": 0, "send_time": 0}]
    listed = wecom.ok("externalcontact/get_groupmsg_list_v2", **window)["group_msg_list"]
    assert [(m["msgid"], m["create_type"], m["text"]) for m in listed] == [
        (msgid, 0, {"content": "hi"})
    ]
    assert wecom.errcode("externalcontact/get_groupmsg_task", msgid="msgNOSUCH") == 41047
    assert wecom.errcode("externalcontact/get_groupmsg_task") == 41046
    too_long = window | {"start_time": now - 40 * 86_400}
    assert wecom.errcode("externalcontact/get_groupmsg_list_v2", **too_long) == 40058


def test_confirm_sends_within_the_corps_receive_limit(wecom: Wecom) -> None:
    corp = wecom.corp
    for external in ("wmA", "wmB", "wmC"):
        add_contact(corp, external, {M0: 1_700_000_000})
    wecom.limits(receive_limit=1, receive_window_seconds=3600)

    def broadcast(*to: str) -> str:
        made = wecom.ok(
            "externalcontact/add_msg_template", external_userid=list(to), text={"content": "x"}
        )
        return str(made["msgid"])

    first = broadcast("wmA")
    sent = wecom.control("POST", f"/msg_templates/{first}/confirm", userid=M0)
    assert sent["sent_by"] == [M0]
    assert [(r["external_userid"], r["status"]) for r in sent["recipients"]] == [("wmA", 1)]

    second = broadcast("wmA", "wmB", "wmC")
    removed = wecom.control("DELETE", f"/customers/wmB/follows/{M0}")
    assert removed["removed"] is True
    sent = wecom.control("POST", f"/msg_templates/{second}/confirm")  # every member
    assert [(r["external_userid"], r["status"]) for r in sent["recipients"]] == [
        ("wmA", 3),  # already received 1 within the hour
        ("wmB", 2),  # no longer a friend of M0
        ("wmC", 1),
    ]
    results = wecom.ok("externalcontact/get_groupmsg_send_result", msgid=second, userid=M0)
    assert [(r["external_userid"], r["userid"], r["status"]) for r in results["send_list"]] == [
        ("wmA", M0, 3),
        ("wmB", M0, 2),
        ("wmC", M0, 1),
    ]
    [task] = wecom.ok("externalcontact/get_groupmsg_task", msgid=second)["task_list"]
    assert (task["status"], task["send_time"] > 0) == (2, True)
    again = wecom.control("POST", f"/msg_templates/{second}/confirm", userid=M0)
    assert again["sent_by"] == []  # a member sends once

    wecom.limits(receive_limit=3)  # the admin allows more: A gets this one
    third = broadcast("wmA")
    sent = wecom.control("POST", f"/msg_templates/{third}/confirm", userid=M0)
    assert [r["status"] for r in sent["recipients"]] == [1]


def test_remind_three_times_a_day_and_cancel(wecom: Wecom) -> None:
    msgid = wecom.ok("externalcontact/add_msg_template", sender=M0, text={"content": "x"})["msgid"]
    for _ in range(3):
        wecom.ok("externalcontact/remind_groupmsg_send", msgid=msgid)
    assert wecom.errcode("externalcontact/remind_groupmsg_send", msgid=msgid) == 41094
    assert wecom.errcode("externalcontact/remind_groupmsg_send", msgid="msgNOSUCH") == 41047

    wecom.ok("externalcontact/cancel_groupmsg_send", msgid=msgid)
    assert wecom.errcode("externalcontact/remind_groupmsg_send", msgid=msgid) == 41093
    assert wecom.errcode("externalcontact/cancel_groupmsg_send", msgid=msgid) == 41093
    confirmed = wecom.control("POST", f"/msg_templates/{msgid}/confirm", userid=M0)
    assert (confirmed["cancelled"], confirmed["sent_by"]) == (True, [])
    [template] = wecom.control("GET", "/msg_templates")
    assert template["cancelled"] is True and len(template["reminders"]) == 3
    statuses = {r["status"] for t in template["tasks"] for r in t["recipients"]}
    assert statuses == {0}  # nothing was sent


def test_a_fault_after_the_effect_loses_only_the_answer(wecom: Wecom) -> None:
    api = "externalcontact/add_msg_template"
    body = {"sender": M0, "text": {"content": "x"}}
    faults = [{"api": api, "errcode": -1, "times": 1}]
    wecom.http.put("/sim/faults", json=faults).raise_for_status()
    assert wecom.errcode(api, **body) == -1
    assert wecom.control("GET", "/msg_templates") == []  # refused before acting

    faults = [{"api": api, "errcode": -1, "times": 1, "after": True}]
    wecom.http.put("/sim/faults", json=faults).raise_for_status()
    assert wecom.errcode(api, **body) == -1
    assert len(wecom.control("GET", "/msg_templates")) == 1  # WeCom made it all the same

    faults = [{"api": api, "http_status": 503, "times": 1, "after": True}]
    wecom.http.put("/sim/faults", json=faults).raise_for_status()
    lost = wecom.http.post(f"/cgi-bin/{api}", params={"access_token": wecom.token}, json=body)
    assert lost.status_code == 503
    assert len(wecom.control("GET", "/msg_templates")) == 2


# CLI -------------------------------------------------------------------------------------


@pytest.fixture
def hub_inbox() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A stand-in for wecom-hub's callback endpoint that keeps what it is posted."""
    received: list[tuple[dict[str, str], bytes]] = []
    receiver = FastAPI()

    @receiver.post("/callback/{slug}")
    async def callback(slug: str, request: Request) -> PlainTextResponse:
        received.append((dict(request.query_params), await request.body()))
        return PlainTextResponse("success")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(receiver, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 10)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", received
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def shop(simulator: Simulator) -> RegisteredApp:
    """The simulated app `shop` of the corp, as `sim scan|confirm|send --app shop` find it;
    its keys sign and encrypt the callbacks."""
    keys = random_app("shop")
    simulator.state.add_app(SimApp("shop", CORP, SECRET, keys.token, keys.aes_key))
    return keys


def test_sim_scan_delivers_the_callback_with_state_and_welcome_code(
    wecom: Wecom,
    simulator: Simulator,
    shop: RegisteredApp,
    hub_inbox: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    config_id = wecom.ok(
        "externalcontact/add_contact_way", type=1, scene=2, user=[M1], state="flyer"
    )["config_id"]
    hub, received = hub_inbox
    runner = CliRunner()
    args = ["scan", config_id, "--app", "shop", "--sim", simulator.url, "--hub", hub]
    result = runner.invoke(sim_cli, [*args, "--customer", "wmSCANNER"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith(f"wmSCANNER scanned {config_id} and added {M1}")
    assert result.output.count("\n") == 1
    [(params, body)] = received
    crypt = WXBizMsgCrypt(token=shop.token, encoding_aes_key=shop.aes_key, receive_id=CORP)
    encrypted = ElementTree.fromstring(body).findtext("Encrypt")
    assert encrypted is not None
    plain = crypt.decrypt_message(
        signature=params["msg_signature"],
        timestamp=params["timestamp"],
        nonce=params["nonce"],
        encrypted=encrypted,
    )
    message = ElementTree.fromstring(plain)
    assert message.findtext("ChangeType") == "add_external_contact"
    assert (message.findtext("UserID"), message.findtext("ExternalUserID")) == (M1, "wmSCANNER")
    assert message.findtext("State") == "flyer"
    code = message.findtext("WelcomeCode")
    assert code in wecom.corp.welcome_codes

    nowhere = runner.invoke(sim_cli, [*args[:-1], "http://127.0.0.1:9"])
    assert nowhere.exit_code == 1
    assert "did not answer" in nowhere.output and nowhere.output.count("\n") == 1


def test_sim_confirm_sends_and_says_what_happened(
    wecom: Wecom, simulator: Simulator, shop: RegisteredApp
) -> None:
    add_contact(wecom.corp, "wmX", {M0: 1_700_000_000})
    add_contact(wecom.corp, "wmY", {M1: 1_700_000_000})
    msgid = wecom.ok(
        "externalcontact/add_msg_template", external_userid=["wmX", "wmY"], text={"content": "x"}
    )["msgid"]
    runner = CliRunner()
    args = ["confirm", msgid, "--app", "shop", "--sim", simulator.url]
    one = runner.invoke(sim_cli, [*args, "--member", M0])
    assert one.exit_code == 0, one.output
    assert one.output == f"{M0} sent {msgid}: 1 sent, 0 not a friend, 0 over the receive limit\n"
    rest = runner.invoke(sim_cli, args)
    assert rest.output.startswith(f"{M1} sent {msgid}: 1 sent")
    unknown = runner.invoke(sim_cli, ["confirm", "msgNOSUCH", *args[2:]])
    assert unknown.exit_code == 1 and "404" in unknown.output
    down = runner.invoke(sim_cli, [*args[:-1], "http://127.0.0.1:9"])
    assert down.exit_code == 1 and down.output.count("\n") == 1


def test_sim_send_of_a_deletion_ends_the_friendship_in_the_simulator(
    wecom: Wecom,
    simulator: Simulator,
    shop: RegisteredApp,
    hub_inbox: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    add_contact(wecom.corp, "wmLEAVER", {M0: 1_700_000_000})
    msgid = wecom.ok(
        "externalcontact/add_msg_template", external_userid=["wmLEAVER"], text={"content": "x"}
    )["msgid"]
    hub, received = hub_inbox
    args = ["send", "customer-deletes-member", "--app", "shop", "--sim", simulator.url]
    sent = CliRunner().invoke(
        sim_cli, [*args, "--hub", hub, "--user", M0, "--customer", "wmLEAVER"]
    )
    assert sent.exit_code == 0, sent.output
    assert len(received) == 1
    confirmed = wecom.control("POST", f"/msg_templates/{msgid}/confirm", userid=M0)
    assert [r["status"] for r in confirmed["recipients"]] == [2]
