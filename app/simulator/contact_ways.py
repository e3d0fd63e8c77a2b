"""联系我 (contact ways) and 加入群聊 (group join ways) as WeCom keeps them, with its errcodes
(CHANNELS-WEBHOOKS.md §3, PROTOCOL.md §5.5, §5.10), and the /sim control to use them: a way
made in the admin console, a WeChat user scanning a code, a customer joining a group.

Departments are not simulated beyond the root: party 1 is every member of the corp; any
other department is outside the app's visible range (60011).

A scan reuses SimState.add_customer (the contact, its follow with the way's state, a
welcome_code), so `sim scan` delivers the same add_external_contact callback `sim send` does.
"""

import hashlib
import secrets
import struct
import time
import zlib
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel

from app.simulator import fields
from app.simulator.control import known_corp
from app.simulator.state import ApiError, ContactWay, Corp, JoinWay, SimState

MAX_MEMBERS = 100  # per way, departments expanded
MAX_STATE = 30  # characters
MAX_REMARK = 30
MAX_ROOM_BASE_NAME = 40
MAX_JOIN_CHATS = 5
MAX_TEMP_SECONDS = 14 * 86_400
ROOT_DEPARTMENT = 1
LIST_SINCE = 1_625_846_400  # 2021-07-10: list_contact_way never returns older ways
LIST_DEFAULT_SECONDS = 90 * 86_400
STYLES = {1: {1, 2, 3}, 2: {1, 2}}  # by type (mini-program button styles)
W = TypeVar("W", ContactWay, JoinWay)


class WaysApi:
    """The 联系我 and 加入群聊 APIs; bound to the simulator because a qr_code is a URL the
    simulator itself serves."""

    def __init__(self, sim: SimState) -> None:
        self.sim = sim

    def qr_url(self, config_id: str) -> str:
        return f"{self.sim.base_url}/sim/qr/{config_id}.png"

    # 联系我 ----------------------------------------------------------------------------

    async def add_contact_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        way_type = _choice(body, "type", missing=41037, invalid=41039, what="type")
        scene = _choice(body, "scene", missing=41038, invalid=41040, what="scene")
        is_temp = body.get("is_temp") is True
        if is_temp and way_type != 1:
            raise ApiError(40058, "a temporary contact way has a single member")
        user, party = _members(corp, way_type, body.get("user"), body.get("party"))
        style = _style(way_type, scene, body)
        remark = fields.text(body, "remark", MAX_REMARK, "")
        state = fields.text(body, "state", MAX_STATE, "")
        skip_verify = fields.flag(body, "skip_verify", True)
        if not is_temp:
            _within_quota(corp)
        config_id = secrets.token_hex(16)
        way = ContactWay(
            config_id=config_id,
            type=way_type,
            scene=scene,
            created_at=int(time.time()),
            user=user,
            party=party,
            qr_code=self.qr_url(config_id) if scene == 2 else "",
            style=style,
            remark=remark,
            skip_verify=skip_verify,
            state=state,
            is_temp=is_temp,
        )
        if is_temp:
            way.expires_in = _seconds(body, "expires_in", 7 * 86_400)
            way.chat_expires_in = _seconds(body, "chat_expires_in", 86_400)
            way.unionid = str(body.get("unionid") or "")
            way.conclusions = dict(body.get("conclusions") or {})
        corp.contact_ways[config_id] = way
        return {"config_id": config_id} | ({"qr_code": way.qr_code} if scene == 2 else {})

    async def get_contact_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        return {"contact_way": contact_way_json(_way(corp.contact_ways, body))}

    async def list_contact_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        now = int(time.time())
        end = fields.integer(body, "end_time", now)
        start = fields.integer(body, "start_time", end - LIST_DEFAULT_SECONDS)
        limit = fields.integer(body, "limit", 100)
        if not 1 <= limit <= 1000:
            raise ApiError(40058, "limit must be 1..1000")
        order = {config_id: index for index, config_id in enumerate(corp.contact_ways)}
        ways = sorted(
            (
                w
                for w in corp.contact_ways.values()
                if not w.is_temp and w.created_at >= LIST_SINCE and start <= w.created_at <= end
            ),
            key=lambda w: (w.created_at, order[w.config_id]),
        )
        after = _cursor(str(body.get("cursor") or ""))
        if after is not None:
            ways = [w for w in ways if (w.created_at, order[w.config_id]) > after]
        page = ways[:limit]
        next_cursor = ""
        if len(ways) > limit:
            last = page[-1]
            next_cursor = f"{last.created_at}-{order[last.config_id]}"
        return {
            "contact_way": [{"config_id": w.config_id} for w in page],
            "next_cursor": next_cursor,
        }

    async def update_contact_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        way = _way(corp.contact_ways, body)
        if way.is_temp and time.time() > way.created_at + way.expires_in:
            raise ApiError(40058, "an expired temporary contact way cannot be changed")
        # Everything is checked before anything changes: a refused update changes nothing.
        user, party = way.user, way.party
        if "user" in body or "party" in body:
            user, party = _members(
                corp,
                way.type,
                body["user"] if "user" in body else way.user,
                body["party"] if "party" in body else way.party,
            )
        style = _style(way.type, way.scene, body) if "style" in body else way.style
        remark = fields.text(body, "remark", MAX_REMARK, way.remark)
        state = fields.text(body, "state", MAX_STATE, way.state)
        skip_verify = fields.flag(body, "skip_verify", way.skip_verify)
        way.user, way.party, way.style = user, party, style
        way.remark, way.state, way.skip_verify = remark, state, skip_verify
        if way.is_temp:
            way.expires_in = _seconds(body, "expires_in", way.expires_in)
            way.chat_expires_in = _seconds(body, "chat_expires_in", way.chat_expires_in)
            if "conclusions" in body:
                way.conclusions = dict(body.get("conclusions") or {})
        return {}

    async def del_contact_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        del corp.contact_ways[_way(corp.contact_ways, body).config_id]
        return {}

    # 加入群聊 ---------------------------------------------------------------------------

    async def add_join_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        scene = _choice(body, "scene", missing=41038, invalid=41040, what="scene")
        chats = _chats(corp, body.get("chat_id_list"))
        optional = _join_fields(body, JoinWay("", scene, chats, 0))
        _within_quota(corp)
        config_id = secrets.token_hex(16)
        way = JoinWay(
            config_id=config_id,
            scene=scene,
            chat_id_list=chats,
            created_at=int(time.time()),
            qr_code=self.qr_url(config_id) if scene == 2 else "",
            **optional,
        )
        corp.join_ways[config_id] = way
        return {"config_id": config_id}

    async def get_join_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        way = _way(corp.join_ways, body)
        return {
            "join_way": {
                "config_id": way.config_id,
                "scene": way.scene,
                "remark": way.remark,
                "auto_create_room": way.auto_create_room,
                "room_base_name": way.room_base_name,
                "room_base_id": way.room_base_id,
                "chat_id_list": list(way.chat_id_list),
                "qr_code": way.qr_code,
                "state": way.state,
            }
        }

    async def update_join_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        way = _way(corp.join_ways, body)
        scene = way.scene
        if "scene" in body:
            scene = _choice(body, "scene", missing=41038, invalid=41040, what="scene")
        chats = _chats(corp, body["chat_id_list"]) if "chat_id_list" in body else way.chat_id_list
        optional = _join_fields(body, way)
        way.scene, way.chat_id_list = scene, chats
        way.qr_code = (way.qr_code or self.qr_url(way.config_id)) if scene == 2 else ""
        for name, value in optional.items():
            setattr(way, name, value)
        return {}

    async def del_join_way(
        self, corp: Corp, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        del corp.join_ways[_way(corp.join_ways, body).config_id]
        return {}


def contact_way_json(way: ContactWay) -> dict[str, Any]:
    """get_contact_way's contact_way: style only when set, temporary fields only when temp."""
    shown: dict[str, Any] = {
        "config_id": way.config_id,
        "type": way.type,
        "scene": way.scene,
        "remark": way.remark,
        "skip_verify": way.skip_verify,
        "state": way.state,
        "qr_code": way.qr_code,
        "user": list(way.user),
        "party": list(way.party),
        "is_temp": way.is_temp,
    }
    if way.style is not None:
        shown["style"] = way.style
    if way.is_temp:
        shown |= {
            "expires_in": way.expires_in,
            "chat_expires_in": way.chat_expires_in,
            "unionid": way.unionid,
            "conclusions": way.conclusions,
        }
    return shown


def way_members(corp: Corp, way: ContactWay) -> list[str]:
    """The members a way adds customers to, departments expanded, each once, in order."""
    members = list(way.user)
    if ROOT_DEPARTMENT in way.party:
        members += corp.members
    return list(dict.fromkeys(members))


# validation ------------------------------------------------------------------------------


def _choice(body: dict[str, Any], key: str, *, missing: int, invalid: int, what: str) -> int:
    value = body.get(key)
    if value is None:
        raise ApiError(missing, f"missing contact way {what}")
    if type(value) is not int or value not in (1, 2):
        raise ApiError(invalid, f"invalid contact way {what}")
    return value


def _members(corp: Corp, way_type: int, user: object, party: object) -> tuple[list[str], list[int]]:
    """A way's user and party lists, checked: type 1 has exactly one user (party is ignored,
    as WeCom does), type 2 some; ≤100 members with departments expanded (41041); everyone
    within the app's visible range (60011)."""
    users = fields.items(user, str, "user")
    parties = fields.items(party, int, "party") if way_type == 2 else []
    if way_type == 1 and len(users) != 1:
        raise ApiError(40058, "a single-member contact way has exactly one user")
    if way_type == 2 and not users and not parties:
        raise ApiError(40058, "user and party cannot both be empty")
    expanded = set(users) | (set(corp.members) if ROOT_DEPARTMENT in parties else set())
    if len(expanded) > MAX_MEMBERS:
        raise ApiError(41041, "contact way member count exceeds the limit of 100")
    if any(u not in corp.members for u in users) or any(p != ROOT_DEPARTMENT for p in parties):
        raise ApiError(60011, "no privilege to access/modify contact/party/agent")
    return list(dict.fromkeys(users)), list(dict.fromkeys(parties))


def _style(way_type: int, scene: int, body: dict[str, Any]) -> int | None:
    style = body.get("style")
    if style is None:
        return None
    if scene == 2:  # a QR code has no button style (WeCom staff: 41040)
        raise ApiError(41040, "invalid contact way scene: style is for scene 1 only")
    if type(style) is not int or style not in STYLES[way_type]:
        raise ApiError(41042, "invalid contact way style")
    return style


def _seconds(body: dict[str, Any], key: str, default: int) -> int:
    value = fields.integer(body, key, default)
    if not 0 < value <= MAX_TEMP_SECONDS:
        raise ApiError(40058, f"{key} must be 1..{MAX_TEMP_SECONDS} seconds")
    return value


def _cursor(cursor: str) -> tuple[int, int] | None:
    created, _, index = cursor.partition("-")
    if not created.isdigit() or not index.isdigit():
        return None
    return int(created), int(index)


def _within_quota(corp: Corp) -> None:
    """Ways made through the API, 联系我 and 加入群聊 together (temporary ones apart)."""
    used = sum(w.by_api and not w.is_temp for w in corp.contact_ways.values())
    if used + len(corp.join_ways) >= corp.limits.contact_way_quota:
        raise ApiError(41045, "contact way count reached the limit")


def _way(ways: dict[str, W], body: dict[str, Any]) -> W:
    """The way of `ways` (a corp's 联系我 or 加入群聊 ways) the body's config_id names."""
    config_id = body.get("config_id")
    if not config_id:
        raise ApiError(41043, "missing config_id")
    way = ways.get(str(config_id))
    if way is None:
        raise ApiError(41044, "invalid config_id")
    return way


def _chats(corp: Corp, value: object) -> list[str]:
    chats = list(dict.fromkeys(fields.items(value, str, "chat_id_list")))
    if not chats:
        raise ApiError(40058, "chat_id_list cannot be empty")
    if len(chats) > MAX_JOIN_CHATS:
        raise ApiError(41091, "a join way links at most 5 groups")
    if any(chat not in corp.groups for chat in chats):
        raise ApiError(40050, "chatid not found")
    return chats


def _join_fields(body: dict[str, Any], current: JoinWay) -> dict[str, Any]:
    """A join way's optional fields, checked; `current`'s where the body has none. A remark
    longer than 30 characters is cut (as WeCom documents), a longer state refused."""
    remark = body.get("remark")
    if remark is not None and not isinstance(remark, str):
        raise ApiError(40058, "remark must be a string")
    auto_create_room = fields.integer(body, "auto_create_room", current.auto_create_room)
    if auto_create_room not in (0, 1):
        raise ApiError(40058, "auto_create_room must be 0 or 1")
    room_base_id = fields.integer(body, "room_base_id", current.room_base_id)
    if room_base_id < 0:
        raise ApiError(40058, "room_base_id must not be negative")
    return {
        "remark": current.remark if remark is None else remark[:MAX_REMARK],
        "auto_create_room": auto_create_room,
        "room_base_name": fields.text(
            body, "room_base_name", MAX_ROOM_BASE_NAME, current.room_base_name
        ),
        "room_base_id": room_base_id,
        "state": fields.text(body, "state", MAX_STATE, current.state),
    }


# the QR code image -----------------------------------------------------------------------


def qr_png(config_id: str, *, modules: int = 25, scale: int = 4, border: int = 4) -> bytes:
    """A small greyscale PNG that looks like a QR code: three finder squares and modules
    drawn from a hash of config_id, so each way's image differs. Not decodable: nobody
    scans it; `POST /sim/corps/{corp}/contact_ways/{config_id}/scan` stands for a scan."""
    bits = b"".join(hashlib.sha256(f"{config_id}:{i}".encode()).digest() for i in range(modules))

    def dark(x: int, y: int) -> bool:
        for fx, fy in ((0, 0), (modules - 7, 0), (0, modules - 7)):
            if fx <= x < fx + 7 and fy <= y < fy + 7:
                dx, dy = x - fx, y - fy
                ring = min(dx, dy, 6 - dx, 6 - dy)
                return ring != 1  # outer ring and 3×3 centre dark, a light ring between
        n = y * modules + x
        return bool(bits[n // 8] >> (n % 8) & 1)

    size = (modules + 2 * border) * scale
    rows = bytearray()
    for py in range(size):
        rows.append(0)  # filter: none
        y = py // scale - border
        for px in range(size):
            x = px // scale - border
            inside = 0 <= x < modules and 0 <= y < modules
            rows.append(0 if inside and dark(x, y) else 255)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


# control ---------------------------------------------------------------------------------


class ConsoleWayIn(BaseModel):
    """A 联系我 way made in the admin console (or by another tool): not counted in the API
    quota, but listed and read like any other, so `sync` can import it."""

    users: list[str]
    state: str = ""
    remark: str = ""
    scene: int = 2
    skip_verify: bool = True
    created_at: int | None = None  # unix s; default now


class ScanIn(BaseModel):
    external_userid: str | None = None  # default: a new customer
    name: str = "新客户"


class JoinIn(BaseModel):
    external_userid: str | None = None  # default: a new customer


def control_router(sim: SimState, api: WaysApi) -> APIRouter:
    router = APIRouter(prefix="/sim", tags=["simulator control"])

    @router.post("/corps/{corp_id}/contact_ways")
    async def console_way(corp_id: str, way: ConsoleWayIn, request: Request) -> dict[str, str]:
        if not way.users or way.scene not in (1, 2):
            raise HTTPException(422, "users must not be empty; scene is 1 or 2")
        sim.base_url = str(request.base_url).rstrip("/")
        corp = sim.corp(corp_id)
        for userid in way.users:
            if userid not in corp.members:
                corp.members.append(userid)
        config_id = secrets.token_hex(16)
        corp.contact_ways[config_id] = ContactWay(
            config_id=config_id,
            type=1 if len(way.users) == 1 else 2,
            scene=way.scene,
            created_at=int(time.time()) if way.created_at is None else way.created_at,
            user=list(way.users),
            party=[],
            qr_code=api.qr_url(config_id) if way.scene == 2 else "",
            remark=way.remark,
            skip_verify=way.skip_verify,
            state=way.state,
            by_api=False,
        )
        return {"config_id": config_id, "qr_code": corp.contact_ways[config_id].qr_code}

    @router.post("/corps/{corp_id}/contact_ways/{config_id}/scan")
    async def scan(corp_id: str, config_id: str, scan: ScanIn | None = None) -> dict[str, str]:
        """A WeChat user scans the way's code: they become a customer of the way's next
        member (round-robin) with the way's state, and a welcome_code is issued."""
        scan = scan or ScanIn()
        corp = known_corp(sim, corp_id)
        way = corp.contact_ways.get(config_id)
        if way is None:
            raise HTTPException(404, f"no contact way {config_id!r}")
        members = way_members(corp, way)
        if not members:
            raise HTTPException(409, f"contact way {config_id!r} has no members")
        userid = members[way.scans % len(members)]
        way.scans += 1
        external = scan.external_userid or f"wm{secrets.token_hex(15)}"
        code = sim.add_customer(
            corp_id, userid=userid, external_userid=external, name=scan.name, state=way.state
        )
        return {
            "external_userid": external,
            "userid": userid,
            "state": way.state,
            "welcome_code": code,
        }

    @router.post("/corps/{corp_id}/join_ways/{config_id}/join")
    async def join(corp_id: str, config_id: str, joiner: JoinIn | None = None) -> dict[str, str]:
        """A customer scans a 加入群聊 code and joins the way's first group: groupchat/get
        then shows them with join_scene 3 and the way's state."""
        joiner = joiner or JoinIn()
        corp = known_corp(sim, corp_id)
        way = corp.join_ways.get(config_id)
        if way is None:
            raise HTTPException(404, f"no join way {config_id!r}")
        group = corp.groups.get(way.chat_id_list[0])
        if group is None:
            raise HTTPException(409, f"the group {way.chat_id_list[0]!r} no longer exists")
        external = joiner.external_userid or f"wm{secrets.token_hex(15)}"
        sim.change_group(
            corp_id, group.chat_id, owner=group.owner, joined=[external], left=[], state=way.state
        )
        return {"chat_id": group.chat_id, "external_userid": external, "state": way.state}

    @router.get("/qr/{config_id}.png")
    async def qr_code(config_id: str) -> Response:
        known = any(
            config_id in corp.contact_ways or config_id in corp.join_ways
            for corp in sim.corps.values()
        )
        if not known:
            raise HTTPException(404, f"no way {config_id!r}")
        return Response(qr_png(config_id), media_type="image/png")

    return router
