"""The WeCom side of a channel: the 联系我 and 加入群聊 calls (CHANNELS-WEBHOOKS.md §3), made
while a request waits, and WeCom's refusals as the problems the API answers.

add_contact_way and add_join_way are not idempotent at WeCom: each call that WeCom acts on
makes a way. They are therefore sent once (`max_attempts=1`): a timeout or an HTTP 5xx may
hide a way that was made, and only the caller (app/channels/service.py) can look for it by
its state. Updates and deletions may be repeated, and get the client's usual retries.

Errcodes pass through as they are (`wecom.41045`, with `wecom_errcode` and `wecom_errmsg`),
with our explanation in `detail`: a 4xx for what the request or the corp's setup must change,
503 with Retry-After for WeCom being busy or silent, 502 for any other refusal.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.errors import (
    AppError,
    BadGateway,
    Conflict,
    ErrorCode,
    FieldError,
    Forbidden,
    Invalid,
    Unavailable,
    wecom_code,
)
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError

SCENE_QR_CODE = 2  # scene 1 is a mini-program button, which has no code to print
TYPE_MULTI = 2  # a single-member way (type 1) could never get a second member
LIST_PAGE = 100
LOOKUP_MARGIN_SECONDS = 300  # clocks differ; a way made "before" its reservation is still ours
LOOKUP_MAX_PAGES = 20
RETRY_AFTER_SECONDS = 5
# del_contact_way of a way WeCom no longer has: 41044 (invalid config_id), or the misleading
# 41037 "missing type" WeCom answers for a config_id it cannot find (CHANNELS-WEBHOOKS.md
# §3.2); del takes no type, so 41037 can mean nothing else there.
GONE = frozenset({41044, 41037})


class LookupIncomplete(Exception):
    """The lookup of a way by its state read LOOKUP_MAX_PAGES pages without reaching the end
    of the list: the way may be further on, so "not found" cannot be said."""


# What each errcode means for a channel, and where in the request it points: (status class,
# field or None, explanation).
_EXPLAINED: dict[int, tuple[type[AppError], str | None, str]] = {
    40003: (Invalid, "userids", "a userid is unknown to WeCom"),
    40050: (Invalid, "chat_ids", "a chat_id is not one of the corp's customer groups"),
    40058: (Invalid, None, "WeCom refused a parameter"),
    41041: (
        Invalid,
        "userids",
        "a channel takes at most 100 members, departments expanded (WeCom's limit)",
    ),
    41044: (Conflict, None, "WeCom no longer knows this way: it was deleted elsewhere"),
    41045: (
        Conflict,
        None,
        "the corp has as many API-made 联系我 and 加入群聊 ways as WeCom allows (they share "
        "one quota, 500,000 by default): remove channels that are no longer used",
    ),
    41091: (Invalid, "chat_ids", "a join way links at most 5 groups"),
    60011: (
        Forbidden,
        "userids",
        "a member or department is outside the app's visible range: widen the range in "
        "WeCom's admin console",
    ),
    60111: (Invalid, "userids", "a userid is unknown to WeCom"),
    84074: (
        Forbidden,
        None,
        "the app may not use customer contact: add it to 「客户联系 - 可调用接口的应用」 in "
        "WeCom's admin console",
    ),
}


def refusal(exc: WecomApiError) -> AppError:
    """WeCom's failure as the problem to answer."""
    extra: dict[str, Any] = {"wecom_errcode": exc.errcode, "wecom_errmsg": exc.errmsg}
    said = f"WeCom {exc.api}: errcode {exc.errcode}: {exc.errmsg}"
    if exc.retryable:  # busy, rate limited, or no answer at all
        return Unavailable(
            f"WeCom did not do it now ({said}); try again",
            retry_after=RETRY_AFTER_SECONDS,
            code=ErrorCode.WECOM_UNAVAILABLE,
            extra=extra,
        )
    assert exc.errcode is not None  # an errcode of None is retryable
    kind, field, explanation = _EXPLAINED.get(
        exc.errcode, (BadGateway, None, "WeCom refused the call")
    )
    detail = f"{explanation} ({said})"
    if kind is Invalid:
        error: AppError = Invalid(
            [FieldError(field or "body", detail)], detail=detail, code=wecom_code(exc.errcode)
        )
        error.extra = extra
        return error
    return kind(detail, code=wecom_code(exc.errcode), extra=extra)


@dataclass(frozen=True, slots=True)
class Way:
    """A way as WeCom has it."""

    config_id: str
    qr_code: str | None
    state: str
    userids: list[str]
    party_ids: list[int]
    remark: str
    skip_verify: bool


def way_of(contact_way: dict[str, Any]) -> Way:
    """get_contact_way's `contact_way`."""
    return Way(
        config_id=str(contact_way["config_id"]),
        qr_code=contact_way.get("qr_code") or None,
        state=str(contact_way.get("state") or ""),
        userids=[str(u) for u in contact_way.get("user") or []],
        party_ids=[int(p) for p in contact_way.get("party") or []],
        remark=str(contact_way.get("remark") or ""),
        skip_verify=bool(contact_way.get("skip_verify", True)),
    )


async def add_contact_way(
    client: WecomClient,
    credentials: Credentials,
    *,
    state: str,
    userids: list[str],
    party_ids: list[int],
    remark: str,
    skip_verify: bool,
) -> tuple[str, str | None]:
    """(config_id, qr_code). Sent once: see the module's docstring."""
    body = await client.call(
        credentials,
        "POST",
        "externalcontact/add_contact_way",
        json={
            "type": TYPE_MULTI,
            "scene": SCENE_QR_CODE,
            "state": state,
            "user": userids,
            "party": party_ids,
            "remark": remark,
            "skip_verify": skip_verify,
        },
        max_attempts=1,
    )
    return str(body["config_id"]), body.get("qr_code") or None


async def update_contact_way(
    client: WecomClient,
    credentials: Credentials,
    *,
    config_id: str,
    state: str | None,
    userids: list[str],
    party_ids: list[int],
    remark: str,
    skip_verify: bool,
) -> None:
    """update_contact_way overwrites the member lists: both are always sent whole. The
    state is sent as it is (what attributes customers to the channel must not depend on
    whether WeCom keeps an omitted field); an imported way whose state is not ours here
    (None) keeps WeCom's."""
    body: dict[str, Any] = {
        "config_id": config_id,
        "user": userids,
        "party": party_ids,
        "remark": remark,
        "skip_verify": skip_verify,
    }
    if state is not None:
        body["state"] = state
    await client.call(credentials, "POST", "externalcontact/update_contact_way", json=body)


async def del_contact_way(client: WecomClient, credentials: Credentials, config_id: str) -> None:
    await client.call(
        credentials, "POST", "externalcontact/del_contact_way", json={"config_id": config_id}
    )


async def get_contact_way(client: WecomClient, credentials: Credentials, config_id: str) -> Way:
    body = await client.call(
        credentials, "POST", "externalcontact/get_contact_way", json={"config_id": config_id}
    )
    return way_of(body["contact_way"])


async def list_contact_ways(
    client: WecomClient,
    credentials: Credentials,
    *,
    start: int,
    end: int,
    cursor: str = "",
) -> tuple[list[str], str]:
    """One page of the config_ids of ways created in [start, end] (Unix seconds), and the
    next cursor ('' at the end)."""
    body = await client.call(
        credentials,
        "POST",
        "externalcontact/list_contact_way",
        json={"start_time": start, "end_time": end, "cursor": cursor, "limit": LIST_PAGE},
    )
    ids = [str(item["config_id"]) for item in body.get("contact_way") or []]
    return ids, str(body.get("next_cursor") or "")


async def find_contact_way(
    client: WecomClient, credentials: Credentials, *, state: str, since: datetime, now: datetime
) -> Way | None:
    """The way carrying `state` made since `since`, if WeCom has one: after an answer to
    add_contact_way was lost, this is how we learn whether WeCom made it. None only when
    the whole list was read: LookupIncomplete past LOOKUP_MAX_PAGES, as a None there would
    let the caller add a second way or forget the first."""
    start = int(since.timestamp()) - LOOKUP_MARGIN_SECONDS
    end = int(now.timestamp()) + LOOKUP_MARGIN_SECONDS
    cursor = ""
    for _ in range(LOOKUP_MAX_PAGES):
        ids, cursor = await list_contact_ways(
            client, credentials, start=start, end=end, cursor=cursor
        )
        for config_id in ids:
            way = await get_contact_way(client, credentials, config_id)
            if way.state == state:
                return way
        if not cursor:
            return None
    raise LookupIncomplete(f"more than {LOOKUP_MAX_PAGES} pages of ways to look through")


async def add_join_way(
    client: WecomClient,
    credentials: Credentials,
    *,
    state: str,
    chat_ids: list[str],
    remark: str,
) -> str:
    """The config_id. Sent once, as add_contact_way."""
    body = await client.call(
        credentials,
        "POST",
        "externalcontact/groupchat/add_join_way",
        json={
            "scene": SCENE_QR_CODE,
            "chat_id_list": chat_ids,
            "remark": remark,
            "state": state,
            "auto_create_room": 1,
        },
        max_attempts=1,
    )
    return str(body["config_id"])


async def get_join_way_qr_code(
    client: WecomClient, credentials: Credentials, config_id: str
) -> str | None:
    body = await client.call(
        credentials,
        "POST",
        "externalcontact/groupchat/get_join_way",
        json={"config_id": config_id},
    )
    return (body.get("join_way") or {}).get("qr_code") or None


async def update_join_way(
    client: WecomClient,
    credentials: Credentials,
    *,
    config_id: str,
    state: str | None,
    chat_ids: list[str],
    remark: str,
) -> None:
    """update_join_way overwrites: every field is sent, the state included."""
    await client.call(
        credentials,
        "POST",
        "externalcontact/groupchat/update_join_way",
        json={
            "config_id": config_id,
            "scene": SCENE_QR_CODE,
            "chat_id_list": chat_ids,
            "remark": remark,
            "state": state or "",
            "auto_create_room": 1,
        },
    )


async def del_join_way(client: WecomClient, credentials: Credentials, config_id: str) -> None:
    await client.call(
        credentials,
        "POST",
        "externalcontact/groupchat/del_join_way",
        json={"config_id": config_id},
    )
