"""The simulator keeps WeCom's rules: single-use 20-second welcome codes, the KF cursor,
tokens, rate limits. Exercised over HTTP with the real client."""

import time
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest

from app.simulator.state import SimState
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError
from tests.conftest import Simulator

CORP, SECRET = "wwsimrules00000001", "secret-of-the-sim-corp"
CREDENTIALS = Credentials(CORP, SECRET)


class _Tokens:
    """Tokens straight from gettoken: these tests are about the simulator, not the cache."""

    def __init__(self, client: WecomClient) -> None:
        self.client = client

    async def token(self, corp_id: str, secret: str, *, replacing: str | None = None) -> str:
        return (await self.client.fetch_token(corp_id, secret))[0]


@pytest.fixture
async def wecom(simulator: Simulator) -> AsyncIterator[WecomClient]:
    simulator.state.corp(CORP).secrets.add(SECRET)
    async with aiohttp.ClientSession(simulator.url) as http:
        client = WecomClient(http, max_attempts=1)
        client.tokens = _Tokens(client)  # type: ignore[assignment]
        yield client


async def welcome(client: WecomClient, code: str) -> None:
    await client.call(
        CREDENTIALS,
        "POST",
        "externalcontact/send_welcome_msg",
        json={"welcome_code": code, "text": {"content": "欢迎"}},
    )


async def test_welcome_code_is_single_use(wecom: WecomClient, simulator: Simulator) -> None:
    code = simulator.state.issue_welcome_code(CORP)
    await welcome(wecom, code)
    with pytest.raises(WecomApiError) as raised:
        await welcome(wecom, code)
    assert raised.value.errcode == 41051


async def test_welcome_code_expires_after_20_seconds(
    wecom: WecomClient, simulator: Simulator
) -> None:
    code = simulator.state.issue_welcome_code(CORP)
    simulator.state.corp(CORP).welcome_codes[code][0] = time.monotonic() - 21
    with pytest.raises(WecomApiError) as raised:
        await welcome(wecom, code)
    assert raised.value.errcode == 40098


async def test_kf_messages_are_read_once_through_the_cursor(
    wecom: WecomClient, simulator: Simulator
) -> None:
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        for text in ("在吗", "菜单"):
            answer = await http.post(
                f"/sim/corps/{CORP}/kf/wkA/messages",
                json={"external_userid": "wmX", "content": text},
            )
            answer.raise_for_status()
    first = await wecom.call(CREDENTIALS, "POST", "kf/sync_msg", json={"open_kfid": "wkA"})
    assert [m["text"]["content"] for m in first["msg_list"]] == ["在吗", "菜单"]
    again = await wecom.call(
        CREDENTIALS,
        "POST",
        "kf/sync_msg",
        json={"open_kfid": "wkA", "cursor": first["next_cursor"]},
    )
    assert (again["msg_list"], again["has_more"]) == ([], 0)
    sent = await wecom.call(
        CREDENTIALS,
        "POST",
        "kf/send_msg",
        json={
            "touser": "wmX",
            "open_kfid": "wkA",
            "msgid": "reply1",
            "msgtype": "text",
            "text": {"content": "你好"},
        },
    )
    assert sent["msgid"] == "reply1"


async def test_media_upload_and_unknown_open_kfid(wecom: WecomClient) -> None:
    uploaded = await wecom.call(
        CREDENTIALS,
        "POST",
        "media/upload",
        params={"type": "image"},
        media=("poster.png", b"\x89PNG" + bytes(100)),
    )
    assert uploaded["media_id"].startswith("MEDIA")
    for params, media, errcode in (
        ({"type": "image"}, None, 44001),  # no file
        ({"type": "image"}, ("tiny.png", b"12345"), 40006),  # 5 bytes: too small
        ({"type": "picture"}, ("p.png", bytes(100)), 40004),
    ):
        with pytest.raises(WecomApiError) as refused:
            await wecom.call(CREDENTIALS, "POST", "media/upload", params=params, media=media)
        assert refused.value.errcode == errcode
    with pytest.raises(WecomApiError) as raised:
        await wecom.call(CREDENTIALS, "POST", "kf/sync_msg", json={"open_kfid": "wkNONE"})
    assert raised.value.errcode == 95004


async def test_rate_limit_answers_45009(wecom: WecomClient, simulator: Simulator) -> None:
    simulator.state.rate_limit_per_minute = 2
    for _ in range(2):
        await wecom.call(CREDENTIALS, "POST", "externalcontact/get_corp_tag_list", json={})
    with pytest.raises(WecomApiError) as raised:
        await wecom.call(CREDENTIALS, "POST", "externalcontact/get_corp_tag_list", json={})
    assert raised.value.errcode == 45009


def test_seeded_corp_has_what_sync_expects() -> None:
    state = SimState(seed=3)
    state.seed("wwseed", members=2, customers_per_member=3, groups=4, tags=5)
    corp = state.corp("wwseed")
    assert (len(corp.members), len(corp.contacts), len(corp.groups)) == (2, 6, 4)
    assert sum(len(g["tag"]) for g in corp.tag_groups.values()) == 5


def test_a_group_change_is_known_before_its_callback() -> None:
    """`sim send join-group` tells the simulator first, so groupchat/get finds the joiner."""
    state = SimState()
    state.seed("wwgroups", members=1, customers_per_member=0, groups=0)
    joined = state.change_group("wwgroups", "wrNEW", owner="member000", joined=["wmA"], left=[])
    assert [(m["userid"], m["type"]) for m in joined.members] == [("member000", 1), ("wmA", 2)]
    version = joined.member_version
    left = state.change_group("wwgroups", "wrNEW", owner="member000", joined=[], left=["wmA"])
    assert [m["userid"] for m in left.members] == ["member000"]
    assert left.member_version != version
