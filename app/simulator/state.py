"""What the simulated WeCom knows: corps, their secrets, tokens, customers, groups, tags,
welcome codes, injected faults, and every API call it received."""

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


@dataclass
class Fault:
    """Answer matching calls with an errcode or an HTTP status, after an optional delay.
    `times` limits how many calls it hits (None: all); `probability` makes it random."""

    api: str = "*"
    errcode: int | None = None
    http_status: int | None = None
    delay: float = 0.0
    times: int | None = None
    probability: float = 1.0

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
class Corp:
    corp_id: str
    secrets: set[str] = field(default_factory=set)
    members: list[str] = field(default_factory=list)
    contacts: dict[str, Contact] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    # group_id → {"group_name", "order", "create_time", "tag": [{"id", "name", …}]}
    tag_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    # welcome_code → (issued at, monotonic seconds; used)
    welcome_codes: dict[str, list[Any]] = field(default_factory=dict)
    # 微信客服: open_kfid → messages from customers, in order (the sync_msg cursor is an index)
    kf_messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    media: dict[str, float] = field(default_factory=dict)  # media_id → uploaded at


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

    def corp(self, corp_id: str) -> Corp:
        return self.corps.setdefault(corp_id, Corp(corp_id))

    def add_app(self, app: SimApp) -> None:
        self.apps[app.slug] = app
        self.corp(app.corp_id).secrets.add(app.secret)

    def change_group(
        self, corp_id: str, chat_id: str, *, owner: str, joined: list[str], left: list[str]
    ) -> Group:
        """A group as WeCom knows it after a change that a callback reports: created if new
        (owned by `owner`), with `joined` in it and `left` gone, so that the groupchat/get
        the callback causes finds what the callback said."""
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
        """A corp as `wecom-hub sync` would find it: members, their customers, groups, tags."""
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
