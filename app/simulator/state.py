"""What the simulated WeCom knows: corps, their secrets, tokens, members, customers, groups, tags,
welcome codes, 联系我 and 加入群聊 ways, 群发 tasks, each corp's limits, injected faults, and
every API call it received."""

import itertools
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

TOKEN_SECONDS = 7200
WELCOME_CODE_SECONDS = 20
MEDIA_SECONDS = 3 * 24 * 3600  # a temporary media_id lives 3 days


class ApiError(Exception):
    """An errcode the simulated WeCom answers; an http_status other than 200 is an injected
    HTTP failure (the body is then not JSON)."""

    def __init__(self, errcode: int, errmsg: str, *, http_status: int = 200) -> None:
        super().__init__(errcode, errmsg)
        self.errcode, self.errmsg, self.http_status = errcode, errmsg, http_status


@dataclass
class Fault:
    """Answer matching calls with an errcode or an HTTP status, after an optional delay.
    `times` limits how many calls it hits (None: all); `probability` makes it random.
    `after`: the call takes effect first and only its answer is replaced (a response lost
    after WeCom acted, which a caller must not take as "nothing happened")."""

    api: str = "*"
    errcode: int | None = None
    http_status: int | None = None
    delay: float = 0.0
    times: int | None = None
    probability: float = 1.0
    after: bool = False

    def matches(self, api: str) -> bool:
        return self.api in ("*", api) and (self.times is None or self.times > 0)


@dataclass
class Contact:
    external_userid: str
    name: str
    type: int = 1
    gender: int = 0
    avatar: str = ""
    unionid: str = ""
    corp_name: str = ""
    # userid → follow info (remark, createtime, tags, state, add_way, …)
    follows: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Group:
    chat_id: str
    name: str
    owner: str
    create_time: int
    notice: str = ""
    members: list[dict[str, Any]] = field(default_factory=list)
    member_version: str = ""


@dataclass
class Limits:
    """A corp's settings that WeCom does not fix in its API: its admin (or Tencent) sets them,
    and they have changed over the years, so callers must not hard-code them."""

    contact_way_quota: int = 500_000  # API-made 联系我 and 加入群聊 ways, together
    receive_limit: int = 1  # mass messages one customer (or group) receives per window
    receive_window_seconds: int = 86_400
    distributing_seconds: float = 2.0  # a new mass message's reads answer 41063 this long
    customer_contact_permission: bool = True  # False: externalcontact/* answers 84074


@dataclass
class ContactWay:
    """A 联系我 way (PROTOCOL.md §5.5, CHANNELS-WEBHOOKS.md §3.1)."""

    config_id: str
    type: int  # 1 single member, 2 several
    scene: int  # 1 mini-program button, 2 QR code
    created_at: int  # unix s
    user: list[str]
    party: list[int]
    qr_code: str = ""  # scene 2 only
    style: int | None = None
    remark: str = ""
    skip_verify: bool = True
    state: str = ""
    is_temp: bool = False
    expires_in: int = 0
    chat_expires_in: int = 0
    unionid: str = ""
    conclusions: dict[str, Any] = field(default_factory=dict)
    by_api: bool = True  # made through add_contact_way (counts towards the quota)
    scans: int = 0  # scans so far: the next one adds the member after the last (round-robin)


@dataclass
class JoinWay:
    """A 加入群聊 way (CHANNELS-WEBHOOKS.md §3.5)."""

    config_id: str
    scene: int
    chat_id_list: list[str]
    created_at: int
    qr_code: str = ""
    remark: str = ""
    auto_create_room: int = 1
    room_base_name: str = ""
    room_base_id: int = 0
    state: str = ""


@dataclass
class Recipient:
    """One customer (or group) of a member's mass-message task, and what happened to it:
    0 not sent, 1 sent, 2 not a friend (any more), 3 had already received enough."""

    external_userid: str = ""  # chat_type single
    chat_id: str = ""  # chat_type group
    status: int = 0
    send_time: int = 0


@dataclass
class MemberTask:
    """What one member has to send of a mass message: status 0 not sent, 2 sent."""

    userid: str
    recipients: list[Recipient] = field(default_factory=list)
    status: int = 0
    send_time: int = 0


@dataclass
class MsgTemplate:
    """A 群发 task made by add_msg_template (CHANNELS-WEBHOOKS.md §4)."""

    msgid: str
    chat_type: str  # single | group
    create_time: int  # unix s
    created_monotonic: float  # for the distributing window
    sender: str
    text: dict[str, Any] | None
    attachments: list[dict[str, Any]]
    allow_select: bool
    tasks: dict[str, MemberTask]
    fail_list: list[str]
    reminders: list[float] = field(default_factory=list)  # unix times of remind calls
    cancelled: bool = False


@dataclass
class Corp:
    corp_id: str
    secrets: set[str] = field(default_factory=set)
    members: list[str] = field(default_factory=list)
    # userid → the member's name (user/get); a member without one is named by their userid
    member_names: dict[str, str] = field(default_factory=dict)
    contacts: dict[str, Contact] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    # group_id → {"group_name", "order", "create_time", "tag": [{"id", "name", …}]}
    tag_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    # welcome_code → (issued at, monotonic seconds; used)
    welcome_codes: dict[str, list[Any]] = field(default_factory=dict)
    # 微信客服: open_kfid → messages from customers, in order (the sync_msg cursor is an index)
    kf_messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    media: dict[str, float] = field(default_factory=dict)  # media_id → uploaded at
    limits: Limits = field(default_factory=Limits)
    contact_ways: dict[str, ContactWay] = field(default_factory=dict)  # by config_id
    join_ways: dict[str, JoinWay] = field(default_factory=dict)  # by config_id
    msg_templates: dict[str, MsgTemplate] = field(default_factory=dict)  # by msgid, in order
    # external_userid or chat_id → unix times it received a mass message (the receive limit)
    received: dict[str, list[float]] = field(default_factory=dict)

    def require_known_media(self, body: dict[str, Any]) -> None:
        """Every media_id (or a miniprogram's pic_media_id) in a message, uploaded and not
        older than 3 days; else 40007."""
        parts = [
            *body.values(),
            *(a.get(a.get("msgtype"), {}) for a in body.get("attachments") or []),
        ]
        for part in parts:
            if not isinstance(part, dict):
                continue
            for key in ("media_id", "pic_media_id"):
                if key not in part:
                    continue
                uploaded = self.media.get(part[key])
                if uploaded is None or time.time() - uploaded > MEDIA_SECONDS:
                    raise ApiError(40007, "invalid media_id")


@dataclass(frozen=True)
class SimApp:
    """An app as WeCom's admin console knows it: its corp and Secret, and the Token and
    EncodingAESKey its callbacks are sealed with (so `sim send` can seal them the same way)."""

    slug: str
    corp_id: str
    secret: str
    token: str
    aes_key: str


@dataclass
class Call:
    api: str
    corp_id: str | None
    body: dict[str, Any]
    errcode: int | None
    http_status: int
    at: float


class SimState:
    def __init__(self, *, rate_limit_per_minute: int = 10_000, seed: int | None = None) -> None:
        self.corps: dict[str, Corp] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # token → (corp_id, expires at)
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self.rate_limit_per_minute = rate_limit_per_minute
        self._minute_counts: dict[tuple[str, str, int], int] = {}
        self.random = random.Random(seed)
        self._ids = itertools.count(1)
        self.apps: dict[str, SimApp] = {}  # slug → app
        # Called when a corp, Secret or app is asked for that is not known: `sim serve` reads
        # wecom-hub's apps again, so apps added (or secrets rotated) after it started work.
        self.learn: Callable[[], Awaitable[None]] | None = None
        # Where callers reach the simulator (from the last request): qr_code URLs point here.
        self.base_url = ""

    def corp(self, corp_id: str) -> Corp:
        return self.corps.setdefault(corp_id, Corp(corp_id))

    def add_app(self, app: SimApp) -> None:
        self.apps[app.slug] = app
        self.corp(app.corp_id).secrets.add(app.secret)

    def add_customer(
        self, corp_id: str, *, userid: str, external_userid: str, name: str, state: str
    ) -> str:
        """A customer adds a member (by a 联系我 way whose `state` is given, or else): the
        contact exists, follows the member, and a fresh welcome_code is issued for the
        add_external_contact callback that says so."""
        corp = self.corp(corp_id)
        if userid not in corp.members:
            corp.members.append(userid)
        contact = corp.contacts.setdefault(external_userid, Contact(external_userid, name))
        contact.follows[userid] = {
            "userid": userid,
            "remark": "",
            "description": "",
            "createtime": int(time.time()),
            "tag_id": [],
            "state": state,
            "add_way": 1,
            "oper_userid": external_userid,
        }
        return self.issue_welcome_code(corp_id)

    def change_group(
        self,
        corp_id: str,
        chat_id: str,
        *,
        owner: str,
        joined: list[str],
        left: list[str],
        state: str = "",
    ) -> Group:
        """A group as WeCom knows it after a change that a callback reports: created if new
        (owned by `owner`), with `joined` in it and `left` gone, so that the groupchat/get
        the callback causes finds what the callback said. `state`: the joiners came through
        a 加入群聊 way with that state."""
        corp = self.corp(corp_id)
        group = corp.groups.get(chat_id)
        if group is None:
            group = corp.groups[chat_id] = Group(
                chat_id, name="客户群", owner=owner, create_time=int(time.time())
            )
            joined = [owner, *joined]
        present = {member["userid"] for member in group.members}
        group.members = [m for m in group.members if m["userid"] not in left]
        for member in joined:
            if member not in present:
                group.members.append(
                    {
                        "userid": member,
                        "type": 1 if member == owner or member in corp.members else 2,
                        "join_time": int(time.time()),
                        "join_scene": 3,  # by QR code
                        "invitor": {"userid": owner},
                        **({"state": state} if state else {}),
                    }
                )
        group.member_version = secrets.token_hex(16)
        return group

    def issue_token(self, corp_id: str) -> str:
        token = secrets.token_urlsafe(48)
        self.tokens[token] = (corp_id, time.time() + TOKEN_SECONDS)
        return token

    def expire_tokens(self) -> None:
        self.tokens = {t: (corp, 0.0) for t, (corp, _) in self.tokens.items()}

    def issue_welcome_code(self, corp_id: str) -> str:
        code = f"WELCOME{next(self._ids):08d}{secrets.token_hex(4)}"
        self.corp(corp_id).welcome_codes[code] = [time.monotonic(), False]
        return code

    def over_rate_limit(self, corp_id: str, api: str) -> bool:
        key = (corp_id, api, int(time.time() // 60))
        self._minute_counts[key] = self._minute_counts.get(key, 0) + 1
        return self._minute_counts[key] > self.rate_limit_per_minute

    def fault_for(self, api: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(api) and self.random.random() < fault.probability:
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def seed(
        self, corp_id: str, *, members: int, customers_per_member: int, groups: int, tags: int = 10
    ) -> None:
        """A corp as `wecom-hub sync` would find it: members (named 成员0, 成员1…), their
        customers, groups, tags."""
        corp = self.corp(corp_id)
        group_id = f"etGROUP{corp_id[-6:]}"
        corp.tag_groups[group_id] = {
            "group_id": group_id,
            "group_name": "渠道",
            "order": 1,
            "create_time": 1_600_000_000,
            "tag": [
                {
                    "id": f"etTAG{i:04d}",
                    "name": f"标签{i}",
                    "order": i,
                    "create_time": 1_600_000_000,
                }
                for i in range(tags)
            ],
        }
        for m in range(members):
            userid = f"member{m:03d}"
            corp.members.append(userid)
            corp.member_names[userid] = f"成员{m}"
            for c in range(customers_per_member):
                external = f"wm{corp_id[-4:]}{m:03d}{c:05d}"
                corp.contacts[external] = Contact(
                    external_userid=external,
                    name=f"客户{m}-{c}",
                    gender=c % 3,
                    follows={
                        userid: {
                            "userid": userid,
                            "remark": "",
                            "description": "",
                            "createtime": 1_600_000_000 + c,
                            "tag_id": [],
                            "state": f"channel{c % 5}",
                            "add_way": 1,
                            "oper_userid": external,
                        }
                    },
                )
        for g in range(groups):
            owner = corp.members[g % len(corp.members)] if corp.members else "owner"
            chat_id = f"wr{corp_id[-4:]}{g:05d}"
            corp.groups[chat_id] = Group(
                chat_id=chat_id,
                name=f"客户群{g}",
                owner=owner,
                create_time=1_600_000_000 + g,
                members=[
                    {
                        "userid": owner,
                        "type": 1,
                        "join_time": 1_600_000_000,
                        "join_scene": 1,
                        "invitor": {"userid": owner},
                    }
                ],
                member_version=secrets.token_hex(16),
            )
