"""The simulated WeCom server API, faithful to WeCom's errcodes (PROTOCOL.md §5), plus a
/sim control API: seed corps, set their limits, inject faults, read the record of calls.
联系我/加入群聊 live in contact_ways.py, 群发 in group_messages.py, each with its own control;
the member API (user/get) in members.py.

Run it with `wecom-hub sim serve`; point WECOM_HUB_WECOM_API_BASE_URL at it.
"""

import asyncio
import email
import email.policy
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from app.simulator import contact_ways, members
from app.simulator import group_messages as msgs
from app.simulator.contact_ways import WaysApi
from app.simulator.state import (
    WELCOME_CODE_SECONDS,
    ApiError,
    Call,
    Contact,
    Corp,
    Fault,
    Limits,
    SimState,
)

Handler = Callable[[Corp, dict[str, Any], dict[str, str]], Awaitable[dict[str, Any]]]

__all__ = ["ApiError", "create_sim_app"]


def create_sim_app(state: SimState | None = None) -> FastAPI:
    sim = state or SimState()
    app = FastAPI(title="wecom-hub simulator")
    app.state.sim = sim
    api = APIRouter(prefix="/cgi-bin")
    ways = WaysApi(sim)

    async def answer(request: Request, name: str, handler: Handler | None) -> Response:
        """Common path of every API: faults, token check, rate limit, record."""
        body: dict[str, Any] = {}
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body = _form_files(request.headers["content-type"], await request.body())
        elif request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                body = {}
        query = dict(request.query_params)
        sim.base_url = str(request.base_url).rstrip("/")
        corp_id: str | None = None
        status = 200
        result: dict[str, Any] = {"errcode": 0, "errmsg": "ok"}
        fault = sim.fault_for(name)
        try:
            if fault is not None and not fault.after:
                await _inject(fault)
            if handler is None:  # gettoken
                corp_id = query.get("corpid", "")
                corp = await _known_corp(sim, corp_id, query.get("corpsecret", ""))
                if corp is None:
                    raise ApiError(40013, "invalid corpid")
                if query.get("corpsecret") not in corp.secrets:
                    raise ApiError(
                        40001, "invalid credential, access_token is invalid or not latest"
                    )
                result |= {"access_token": sim.issue_token(corp_id), "expires_in": 7200}
            else:
                token = query.get("access_token")
                if not token:
                    raise ApiError(41001, "access_token missing")
                if token not in sim.tokens:
                    raise ApiError(40014, "invalid access_token")
                corp_id, expires = sim.tokens[token]
                if expires <= time.time():
                    raise ApiError(42001, "access_token expired")
                if sim.over_rate_limit(corp_id, name):
                    raise ApiError(45009, "api freq out of limit")
                corp = sim.corp(corp_id)
                if name.startswith("externalcontact/") and not (
                    corp.limits.customer_contact_permission
                ):
                    raise ApiError(84074, "no external contact permission")
                result |= await handler(corp, body, query)
        except ApiError as exc:
            result, status = {"errcode": exc.errcode, "errmsg": exc.errmsg}, exc.http_status
        if fault is not None and fault.after:  # WeCom acted; its answer is lost
            try:
                await _inject(fault)
            except ApiError as exc:
                result, status = {"errcode": exc.errcode, "errmsg": exc.errmsg}, exc.http_status
        shown = {k: v for k, v in query.items() if k not in ("access_token", "corpsecret")}
        sim.calls.append(
            Call(name, corp_id, body or shown, result.get("errcode"), status, time.time())
        )
        if status != 200:
            return Response("busy", status_code=status)
        return JSONResponse(result)

    def route(method: str, path: str, handler: Handler | None) -> None:
        name = path.strip("/")

        async def endpoint(request: Request) -> Response:
            return await answer(request, name, handler)

        api.add_api_route(path, endpoint, methods=[method], name=name)

    route("GET", "/gettoken", None)
    route("GET", "/externalcontact/get", get_contact)
    route("GET", "/externalcontact/list", list_contacts)
    route("GET", "/externalcontact/get_follow_user_list", follow_user_list)
    route("POST", "/externalcontact/batch/get_by_user", batch_get_by_user)
    route("POST", "/externalcontact/groupchat/list", groupchat_list)
    route("POST", "/externalcontact/groupchat/get", groupchat_get)
    route("POST", "/externalcontact/get_corp_tag_list", get_corp_tag_list)
    route("POST", "/externalcontact/mark_tag", mark_tag)
    route("POST", "/externalcontact/send_welcome_msg", send_welcome_msg)
    route("POST", "/media/upload", media_upload)
    route("POST", "/kf/sync_msg", kf_sync_msg)
    route("POST", "/kf/send_msg", kf_send_msg)
    route("POST", "/kf/send_msg_on_event", kf_send_msg_on_event)
    route("POST", "/message/send", message_send)
    route("GET", "/user/get", members.user_get)
    route("POST", "/externalcontact/add_contact_way", ways.add_contact_way)
    route("POST", "/externalcontact/get_contact_way", ways.get_contact_way)
    route("POST", "/externalcontact/list_contact_way", ways.list_contact_way)
    route("POST", "/externalcontact/update_contact_way", ways.update_contact_way)
    route("POST", "/externalcontact/del_contact_way", ways.del_contact_way)
    route("POST", "/externalcontact/groupchat/add_join_way", ways.add_join_way)
    route("POST", "/externalcontact/groupchat/get_join_way", ways.get_join_way)
    route("POST", "/externalcontact/groupchat/update_join_way", ways.update_join_way)
    route("POST", "/externalcontact/groupchat/del_join_way", ways.del_join_way)
    route("POST", "/externalcontact/add_msg_template", msgs.add_msg_template)
    route("POST", "/externalcontact/get_groupmsg_list_v2", msgs.get_groupmsg_list_v2)
    route("POST", "/externalcontact/get_groupmsg_task", msgs.get_groupmsg_task)
    route("POST", "/externalcontact/get_groupmsg_send_result", msgs.get_groupmsg_send_result)
    route("POST", "/externalcontact/remind_groupmsg_send", msgs.remind_groupmsg_send)
    route("POST", "/externalcontact/cancel_groupmsg_send", msgs.cancel_groupmsg_send)
    app.include_router(api)
    app.include_router(control_router(sim))
    app.include_router(contact_ways.control_router(sim, ways))
    app.include_router(msgs.control_router(sim))
    return app


async def _inject(fault: Fault) -> None:
    """The fault's delay, then its HTTP status or errcode (as an ApiError)."""
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.http_status:
        raise ApiError(-1, f"injected HTTP {fault.http_status}", http_status=fault.http_status)
    if fault.errcode is not None:
        raise ApiError(fault.errcode, "injected fault")


async def _known_corp(sim: SimState, corp_id: str, secret: str) -> Corp | None:
    """The corp, after learning the apps again if it or the secret is new to the simulator."""
    corp = sim.corps.get(corp_id)
    if (corp is None or secret not in corp.secrets) and sim.learn is not None:
        await sim.learn()
        corp = sim.corps.get(corp_id)
    return corp


# externalcontact --------------------------------------------------------------------------


def _contact_json(contact: Contact) -> dict[str, Any]:
    return {
        "external_userid": contact.external_userid,
        "name": contact.name,
        "type": contact.type,
        "gender": contact.gender,
        "avatar": contact.avatar,
        "unionid": contact.unionid,
        "corp_name": contact.corp_name,
    }


def _tag_names(corp: Corp) -> dict[str, tuple[str, str]]:
    return {
        tag["id"]: (group["group_name"], tag["name"])
        for group in corp.tag_groups.values()
        for tag in group["tag"]
    }


async def get_contact(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    contact = corp.contacts.get(query.get("external_userid", ""))
    if contact is None:
        raise ApiError(84061, "not external contact")
    names = _tag_names(corp)
    follow_user = [
        {
            **{k: v for k, v in f.items() if k != "tag_id"},
            "tags": [
                {
                    "tag_id": t,
                    "group_name": names.get(t, ("", ""))[0],
                    "tag_name": names.get(t, ("", ""))[1],
                    "type": 1,
                }
                for t in f["tag_id"]
            ],
        }
        for f in contact.follows.values()
    ]
    return {"external_contact": _contact_json(contact), "follow_user": follow_user}


async def list_contacts(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    userid = query.get("userid", "")
    if userid not in corp.members:
        raise ApiError(60111, "userid not found")
    return {
        "external_userid": [
            c.external_userid for c in corp.contacts.values() if userid in c.follows
        ]
    }


async def follow_user_list(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    return {"follow_user": list(corp.members)}


def _page(items: list[Any], cursor: str, limit: int) -> tuple[list[Any], str]:
    start = int(cursor) if cursor.isdigit() else 0
    end = start + limit
    return items[start:end], (str(end) if end < len(items) else "")


async def batch_get_by_user(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    userids = body.get("userid_list") or []
    if not userids or len(userids) > 100:
        raise ApiError(40058, "userid_list must have 1 to 100 userids")
    limit = min(int(body.get("limit") or 50), 100)
    pairs = [(c, u) for c in corp.contacts.values() for u in userids if u in c.follows]
    page, next_cursor = _page(pairs, str(body.get("cursor") or ""), limit)
    return {
        "external_contact_list": [
            {"external_contact": _contact_json(c), "follow_info": c.follows[u]} for c, u in page
        ],
        "next_cursor": next_cursor,
    }


async def groupchat_list(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    limit = int(body.get("limit") or 0)
    if not 1 <= limit <= 1000:
        raise ApiError(40058, "limit must be 1..1000")
    groups = sorted(corp.groups)
    page, next_cursor = _page(groups, str(body.get("cursor") or ""), limit)
    return {
        "group_chat_list": [{"chat_id": c, "status": 0} for c in page],
        "next_cursor": next_cursor,
    }


async def groupchat_get(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    group = corp.groups.get(str(body.get("chat_id", "")))
    if group is None:
        raise ApiError(40050, "chatid not found")
    return {
        "group_chat": {
            "chat_id": group.chat_id,
            "name": group.name,
            "owner": group.owner,
            "create_time": group.create_time,
            "notice": group.notice,
            "member_list": group.members,
            "admin_list": [],
            "member_version": group.member_version,
        }
    }


async def get_corp_tag_list(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    return {"tag_group": list(corp.tag_groups.values())}


async def mark_tag(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    add, remove = body.get("add_tag") or [], body.get("remove_tag") or []
    if not add and not remove:
        raise ApiError(40058, "add_tag and remove_tag cannot both be empty")
    contact = corp.contacts.get(str(body.get("external_userid", "")))
    follow = contact.follows.get(str(body.get("userid", ""))) if contact else None
    if follow is None:
        raise ApiError(84061, "not external contact")
    known = _tag_names(corp)
    if any(tag not in known for tag in [*add, *remove]):
        raise ApiError(40068, "invalid tagid")
    follow["tag_id"] = sorted((set(follow["tag_id"]) | set(add)) - set(remove))
    return {}


async def send_welcome_msg(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    code = corp.welcome_codes.get(str(body.get("welcome_code", "")))
    if not body.get("text") and not body.get("attachments"):
        raise ApiError(41048, "text and attachments cannot both be empty")
    if len(body.get("attachments") or []) > 9:
        raise ApiError(41049, "too many attachments")
    if code is None:
        raise ApiError(40098, "invalid welcome_code")
    corp.require_known_media(body)
    issued, used = code
    if used:
        raise ApiError(41051, "externaluser has started chatting")
    if time.monotonic() - issued > WELCOME_CODE_SECONDS:
        raise ApiError(40098, "welcome_code expired")
    code[1] = True
    return {}


# media, 微信客服, app messages ------------------------------------------------------------


async def media_upload(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    limits = {"image": 10 << 20, "voice": 2 << 20, "video": 10 << 20, "file": 20 << 20}
    kind = query.get("type", "")
    if kind not in limits:
        raise ApiError(40004, "invalid media type")
    media = body.get("media")
    if not media:
        raise ApiError(44001, "empty media data")
    if not 5 < media["size"] <= limits[kind]:
        raise ApiError(40006, "invalid file size")
    media_id = f"MEDIA{secrets.token_hex(16)}"
    corp.media[media_id] = time.time()
    return {"type": kind, "media_id": media_id, "created_at": str(int(time.time()))}


async def kf_sync_msg(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    """Messages after the cursor, at most `limit`; the cursor is opaque to callers."""
    open_kfid = str(body.get("open_kfid", ""))
    if open_kfid not in corp.kf_messages:
        raise ApiError(95004, "open_kfid not exist")
    messages = corp.kf_messages[open_kfid]
    cursor = str(body.get("cursor") or "")
    start = int(cursor[1:]) if cursor.startswith("c") and cursor[1:].isdigit() else 0
    limit = min(int(body.get("limit") or 1000), 1000)
    page = messages[start : start + limit]
    end = start + len(page)
    return {"next_cursor": f"c{end}", "has_more": int(end < len(messages)), "msg_list": page}


def _form_files(content_type: str, raw: bytes) -> dict[str, Any]:
    """A multipart form's file fields: name → {filename, size} (the content is not kept)."""
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw, policy=email.policy.HTTP
    )
    files: dict[str, Any] = {}
    for part in message.iter_parts():
        name, filename = part.get_param("name", header="content-disposition"), part.get_filename()
        content = part.get_payload(decode=True)
        if isinstance(name, str) and filename and isinstance(content, bytes):
            files[name] = {"filename": filename, "size": len(content)}
    return files


async def kf_send_msg(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    if str(body.get("open_kfid", "")) not in corp.kf_messages:
        raise ApiError(95004, "open_kfid not exist")
    corp.require_known_media(body)
    return {"msgid": body.get("msgid") or f"sent{secrets.token_hex(8)}"}


async def kf_send_msg_on_event(
    corp: Corp, body: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    code = corp.welcome_codes.get(str(body.get("code", "")))
    if code is None or code[1] or time.monotonic() - code[0] > WELCOME_CODE_SECONDS:
        raise ApiError(95017, "invalid or expired code")
    code[1] = True
    return {"msgid": body.get("msgid") or f"sent{secrets.token_hex(8)}"}


async def message_send(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    if not body.get("touser") and not body.get("toparty") and not body.get("totag"):
        raise ApiError(40058, "touser, toparty and totag cannot all be empty")
    return {"invaliduser": "", "invalidparty": "", "invalidtag": "", "msgid": secrets.token_hex(16)}


# control ---------------------------------------------------------------------------------


class CorpIn(BaseModel):
    corp_id: str
    secret: str


class SeedIn(BaseModel):
    members: int = 5
    customers_per_member: int = 10
    groups: int = 10
    tags: int = 10


class KfCustomerIn(BaseModel):
    external_userid: str


class KfMessageIn(BaseModel):
    external_userid: str
    content: str
    seconds_ago: int = 0  # a message written earlier (a 48-hour window that has closed)


class GroupChangeIn(BaseModel):
    owner: str
    joined: list[str] = []
    left: list[str] = []


class CustomerIn(BaseModel):
    userid: str
    external_userid: str
    name: str = "新客户"
    state: str = ""


class LimitsIn(BaseModel):
    """Any of a corp's limits; those left out keep their value."""

    contact_way_quota: Annotated[int, Field(ge=0)] | None = None
    receive_limit: Annotated[int, Field(ge=0)] | None = None
    receive_window_seconds: Annotated[int, Field(ge=1)] | None = None
    distributing_seconds: Annotated[float, Field(ge=0)] | None = None
    customer_contact_permission: bool | None = None


def control_router(sim: SimState) -> APIRouter:
    router = APIRouter(prefix="/sim", tags=["simulator control"])

    def _add(corp_id: str, customer: CustomerIn) -> str:
        return sim.add_customer(
            corp_id,
            userid=customer.userid,
            external_userid=customer.external_userid,
            name=customer.name,
            state=customer.state,
        )

    @router.post("/corps")
    async def add_corp(corp: CorpIn) -> dict[str, str]:
        sim.corp(corp.corp_id).secrets.add(corp.secret)
        return {"corp_id": corp.corp_id}

    @router.post("/corps/{corp_id}/seed")
    async def seed(corp_id: str, seed: SeedIn) -> dict[str, int]:
        sim.seed(
            corp_id,
            members=seed.members,
            customers_per_member=seed.customers_per_member,
            groups=seed.groups,
            tags=seed.tags,
        )
        corp = sim.corp(corp_id)
        return {
            "members": len(corp.members),
            "customers": len(corp.contacts),
            "groups": len(corp.groups),
        }

    @router.post("/corps/{corp_id}/customers")
    async def add_customer(corp_id: str, customer: CustomerIn) -> dict[str, str]:
        """A customer adds a member: the contact exists, and a fresh welcome_code is issued
        for the callback that the sender then delivers."""
        return {"welcome_code": _add(corp_id, customer)}

    @router.delete("/corps/{corp_id}/customers/{external_userid}/follows/{userid}")
    async def remove_follow(corp_id: str, external_userid: str, userid: str) -> dict[str, Any]:
        """The customer and the member are no longer friends (either deleted the other): a
        mass message of that member's then reaches them with status 2."""
        contact = sim.corp(corp_id).contacts.get(external_userid)
        removed = contact is not None and contact.follows.pop(userid, None) is not None
        return {"external_userid": external_userid, "userid": userid, "removed": removed}

    @router.put("/corps/{corp_id}/limits")
    async def set_limits(corp_id: str, limits: LimitsIn) -> Limits:
        """A corp's quota of ways, receive limit, distributing delay, permission."""
        current = sim.corp(corp_id).limits
        for name, value in limits.model_dump(exclude_none=True).items():
            setattr(current, name, value)
        return current

    @router.post("/corps/{corp_id}/groups/{chat_id}")
    async def change_group(corp_id: str, chat_id: str, change: GroupChangeIn) -> dict[str, Any]:
        """A group is created, or customers join or leave it: WeCom knows before it sends
        the callback that says so."""
        group = sim.change_group(
            corp_id, chat_id, owner=change.owner, joined=change.joined, left=change.left
        )
        return {"chat_id": group.chat_id, "members": [m["userid"] for m in group.members]}

    @router.get("/apps/{slug}")
    async def app_keys(slug: str) -> dict[str, str]:
        """An app's corp, Token and EncodingAESKey, for `sim send` to seal callbacks with
        (WeCom knows them: the admin typed them into its console)."""
        if sim.learn is not None:
            await sim.learn()  # a key rotated since the simulator last looked
        app = sim.apps.get(slug)
        if app is None:
            raise HTTPException(404, f"no app {slug!r}")
        return {"corp_id": app.corp_id, "token": app.token, "aes_key": app.aes_key}

    @router.post("/corps/{corp_id}/kf/{open_kfid}/messages")
    async def kf_customer_writes(
        corp_id: str, open_kfid: str, message: KfMessageIn
    ) -> dict[str, str]:
        """A WeChat customer writes to a KF account; the token goes into the callback."""
        messages = sim.corp(corp_id).kf_messages.setdefault(open_kfid, [])
        msgid = f"msg{len(messages):06d}{secrets.token_hex(4)}"
        messages.append(
            {
                "msgid": msgid,
                "open_kfid": open_kfid,
                "external_userid": message.external_userid,
                "send_time": int(time.time()) - message.seconds_ago,
                "origin": 3,
                "msgtype": "text",
                "text": {"content": message.content},
            }
        )
        return {"msgid": msgid, "token": secrets.token_urlsafe(24)}

    @router.post("/corps/{corp_id}/kf/{open_kfid}/enter_session")
    async def kf_enter_session(
        corp_id: str, open_kfid: str, customer: KfCustomerIn
    ) -> dict[str, str]:
        """A WeChat customer opens the KF chat: an enter_session event with a welcome_code."""
        messages = sim.corp(corp_id).kf_messages.setdefault(open_kfid, [])
        code = sim.issue_welcome_code(corp_id)
        messages.append(
            {
                "msgid": f"evt{len(messages):06d}{secrets.token_hex(4)}",
                "send_time": int(time.time()),
                "origin": 4,
                "msgtype": "event",
                "event": {
                    "event_type": "enter_session",
                    "open_kfid": open_kfid,
                    "external_userid": customer.external_userid,
                    "scene": "",
                    "welcome_code": code,
                },
            }
        )
        return {"welcome_code": code, "token": secrets.token_urlsafe(24)}

    @router.post("/corps/{corp_id}/customers/batch")
    async def add_customers(corp_id: str, customers: list[CustomerIn]) -> list[str]:
        """Many customers at once, as `customers` adds one (the contact exists, a welcome
        code each, in their order): for load tests, whose customers must be real ones that
        externalcontact/get then finds."""
        return [_add(corp_id, customer) for customer in customers[:10_000]]

    @router.post("/corps/{corp_id}/welcome_codes")
    async def issue_welcome_codes(corp_id: str, count: int = 1) -> list[str]:
        """Fresh welcome codes (valid 20 s each) for load tests that need many at once."""
        return [sim.issue_welcome_code(corp_id) for _ in range(min(count, 10_000))]

    @router.get("/calls")
    async def calls(api: str | None = None) -> list[dict[str, Any]]:
        return [vars(c) for c in sim.calls if api is None or c.api == api]

    @router.delete("/calls")
    async def clear_calls() -> dict[str, int]:
        count = len(sim.calls)
        sim.calls.clear()
        return {"cleared": count}

    @router.put("/faults")
    async def set_faults(faults: list[Fault]) -> dict[str, int]:
        sim.faults = faults
        return {"faults": len(faults)}

    @router.post("/tokens/expire")
    async def expire_tokens() -> dict[str, int]:
        sim.expire_tokens()
        return {"expired": len(sim.tokens)}

    return router
