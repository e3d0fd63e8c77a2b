"""Facts from the WeCom API, written into the customer state: used by the enrichment actions
and by `wecom-hub sync`. Upserts again, so a repeat changes nothing.

API answers fill in details (names, remarks, tags, group members); they never decide a
follow's status, which only events and `sync` (for relations that predate us) set."""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import and_, func, not_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomHandler, WecomRun
from app.batching import GroupCommit
from app.models import CustomerGroup, ExternalContact, Follow, GroupMember, Tag, TagGroup
from app.wecom.errors import WecomApiError


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


_CONTACT_FIELDS = ("name", "type", "avatar", "gender", "corp_name", "corp_full_name", "position")
_FOLLOW_FIELDS = ("add_way", "state", "remark", "description", "oper_userid", "tag_ids")


# Built once: an ORM insert built per call rebuilt its `excluded` columns and its cache key
# every time, which cost more than the statement itself (bench/welcome.py, ADR 0008).
_contact_insert = insert(ExternalContact)
_APPLY_CONTACTS = _contact_insert.on_conflict_do_update(
    index_elements=["corp_id", "external_userid"],
    set_={f: _contact_insert.excluded[f] for f in (*_CONTACT_FIELDS, "unionid", "enriched_at")},
)
_follow_insert = insert(Follow)
_APPLY_FOLLOWS = _follow_insert.on_conflict_do_update(
    index_elements=["corp_id", "userid", "external_userid"],
    set_={
        **{f: _follow_insert.excluded[f] for f in (*_FOLLOW_FIELDS, "enriched_at")},
        "added_at": func.coalesce(Follow.added_at, _follow_insert.excluded.added_at),
    },
)


def _contact_row(corp_id: str, contact: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "corp_id": corp_id,
        "external_userid": contact["external_userid"],
        **{f: contact.get(f) for f in _CONTACT_FIELDS},
        "unionid": contact.get("unionid") or None,
        "enriched_at": now,
    }


def _follow_row(
    corp_id: str, external_userid: str, follow: dict[str, Any], now: datetime
) -> dict[str, Any]:
    tag_ids = follow.get("tag_id")
    if tag_ids is None:
        tag_ids = [t["tag_id"] for t in follow.get("tags", []) if t.get("tag_id")]
    return {
        "corp_id": corp_id,
        "userid": follow["userid"],
        "external_userid": external_userid,
        "status": "active",
        "added_at": _time(follow.get("createtime")),
        **{f: follow.get(f) for f in _FOLLOW_FIELDS},
        "state": follow.get("state") or None,
        "tag_ids": tag_ids,
        "enriched_at": now,
    }


async def apply_contacts(
    session: AsyncSession, corp_id: str, contacts: list[dict[str, Any]]
) -> None:
    """Upsert many at once: one multi-row statement, not one round trip per customer."""
    if not contacts:
        return
    now = datetime.now(UTC)
    await session.execute(_APPLY_CONTACTS, [_contact_row(corp_id, c, now) for c in contacts])


async def apply_follows(
    session: AsyncSession, corp_id: str, follows: list[tuple[str, dict[str, Any]]]
) -> None:
    """(external_userid, follow) pairs; follow is externalcontact/get's follow_user item
    (tags[]) or batch/get_by_user's follow_info (tag_id[]): both are accepted. A follow that
    is new here is active; an existing one keeps the status its events gave it."""
    if not follows:
        return
    now = datetime.now(UTC)
    await session.execute(
        _APPLY_FOLLOWS, [_follow_row(corp_id, external, f, now) for external, f in follows]
    )


# enrich_contact's write: each customer and every follow WeCom listed, for every enrichment
# that finished together, in one statement (ContactWrites). enriched_at is when WeCom was
# asked: its answer is the state as of then, and a tag a mark_tag action set after that
# (tags_marked_at) is newer than the answer's list. A row is only ever named once per
# statement (ContactWrites keeps the latest answer), as an upsert may not touch it twice.
_ENRICHED_CONTACTS = f"""
    WITH contact AS (
        INSERT INTO external_contacts AS c (corp_id, external_userid, {", ".join(_CONTACT_FIELDS)},
                                            unionid, enriched_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[],
                             $6::integer[], $7::text[], $8::text[], $9::text[], $10::text[],
                             $11::timestamptz[])
        ON CONFLICT (corp_id, external_userid) DO UPDATE
        SET {", ".join(f"{f} = excluded.{f}" for f in (*_CONTACT_FIELDS, "unionid", "enriched_at"))}
    )
    INSERT INTO follows AS f (corp_id, userid, external_userid, status, added_at, add_way, state,
                              remark, description, oper_userid, tag_ids, enriched_at)
    SELECT u.corp_id, u.userid, u.external_userid, 'active', u.added_at, u.add_way, u.state,
           u.remark, u.description, u.oper_userid,
           ARRAY(SELECT jsonb_array_elements_text(u.tag_ids::jsonb)), u.enriched_at
    FROM unnest($12::text[], $13::text[], $14::text[], $15::timestamptz[], $16::integer[],
                $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
                $22::timestamptz[])
         AS u(corp_id, external_userid, userid, added_at, add_way, state, remark, description,
              oper_userid, tag_ids, enriched_at)
    ON CONFLICT (corp_id, userid, external_userid) DO UPDATE
    SET {", ".join(f"{f} = excluded.{f}" for f in (*_FOLLOW_FIELDS[:-1], "enriched_at"))},
        added_at = coalesce(f.added_at, excluded.added_at),
        tag_ids = CASE WHEN f.tags_marked_at > excluded.enriched_at THEN f.tag_ids
                       ELSE excluded.tag_ids END
"""  # noqa: S608 - only the constant field names are interpolated


# The follow columns of _ENRICHED_CONTACTS's second unnest, up to tag_ids.
_FOLLOW_COLUMNS = (
    "corp_id",
    "external_userid",
    "userid",
    "added_at",
    "add_way",
    "state",
    "remark",
    "description",
    "oper_userid",
)


@dataclass(frozen=True, slots=True)
class _Enriched:
    """One externalcontact/get answer, as rows for _ENRICHED_CONTACTS (each row's
    enriched_at is when WeCom was asked)."""

    contact: dict[str, Any]
    follows: list[dict[str, Any]]


class ContactWrites:
    """Where enrich_contact stores what WeCom answered: every answer that came in while the
    last write was in flight goes in the next one, one statement and one commit (at 200 new
    customers a second a commit each was a large share of Postgres's CPU, ADR 0008)."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db
        self._writes = GroupCommit(self._write)

    async def store(
        self, corp_id: str, external_userid: str, body: dict[str, Any], asked_at: datetime
    ) -> None:
        """Committed when it returns."""
        contact = _contact_row(corp_id, body["external_contact"], asked_at)
        follows = [
            _follow_row(corp_id, external_userid, follow, asked_at)
            for follow in body.get("follow_user", [])
            if follow.get("userid")
        ]
        await self._writes.submit(_Enriched(contact, follows))

    async def _write(self, batch: list[_Enriched]) -> None:
        # One row per key, the latest answer's: a customer asked twice in one batch, or a
        # member listed twice in one answer, would make the upsert touch a row twice.
        latest = sorted(batch, key=lambda e: e.contact["enriched_at"])
        contacts = {(c["corp_id"], c["external_userid"]): c for c in (e.contact for e in latest)}
        follows = {
            (f["corp_id"], f["userid"], f["external_userid"]): f for e in latest for f in e.follows
        }
        # In key order: two processes writing overlapping batches take their row locks in
        # one order, instead of deadlocking now and then.
        rows = [contacts[key] for key in sorted(contacts)]
        follow_rows = [follows[key] for key in sorted(follows)]
        await self._db.execute(
            _ENRICHED_CONTACTS,
            [r["corp_id"] for r in rows],
            [r["external_userid"] for r in rows],
            *([r[f] for r in rows] for f in _CONTACT_FIELDS),
            [r["unionid"] for r in rows],
            [r["enriched_at"] for r in rows],
            *([f[c] for f in follow_rows] for c in _FOLLOW_COLUMNS),
            [json.dumps(f["tag_ids"]) for f in follow_rows],
            [f["enriched_at"] for f in follow_rows],
        )


async def apply_group(session: AsyncSession, corp_id: str, group: dict[str, Any]) -> None:
    values = {
        "name": group.get("name"),
        "owner": group.get("owner"),
        "notice": group.get("notice"),
        "created_at": _time(group.get("create_time")),
        "member_version": group.get("member_version"),
        "enriched_at": func.now(),
    }
    statement = insert(CustomerGroup).values(corp_id=corp_id, chat_id=group["chat_id"], **values)
    await session.execute(
        statement.on_conflict_do_update(index_elements=["corp_id", "chat_id"], set_=values)
    )
    for member in group.get("member_list", []):
        details = {
            "member_type": member.get("type"),
            "unionid": member.get("unionid") or None,
            "invitor": (member.get("invitor") or {}).get("userid"),
            "group_nickname": member.get("group_nickname"),
            "name": member.get("name"),
            "state": member.get("state") or None,
        }
        joined = {
            "joined_at": _time(member.get("join_time")),
            "join_scene": member.get("join_scene"),
        }
        statement = insert(GroupMember).values(
            corp_id=corp_id,
            chat_id=group["chat_id"],
            member_id=member["userid"],
            **details,
            **joined,
        )
        # join time and scene from an event (which knows them first-hand) are kept.
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["corp_id", "chat_id", "member_id"],
                set_={
                    **details,
                    "joined_at": func.coalesce(GroupMember.joined_at, statement.excluded.joined_at),
                    "join_scene": func.coalesce(
                        GroupMember.join_scene, statement.excluded.join_scene
                    ),
                },
            )
        )


async def apply_tags(session: AsyncSession, corp_id: str, tag_groups: list[dict[str, Any]]) -> None:
    """The whole list as get_corp_tag_list returns it: what is not in it has been deleted."""
    group_ids, tag_ids = [], []
    for group in tag_groups:
        group_ids.append(group["group_id"])
        values = {
            "name": group.get("group_name"),
            "order": group.get("order"),
            "created_at": _time(group.get("create_time")),
            "deleted_at": None,
        }
        statement = insert(TagGroup).values(corp_id=corp_id, group_id=group["group_id"], **values)
        await session.execute(
            statement.on_conflict_do_update(index_elements=["corp_id", "group_id"], set_=values)
        )
        for tag in group.get("tag", []):
            tag_ids.append(tag["id"])
            values = {
                "group_id": group["group_id"],
                "name": tag.get("name"),
                "order": tag.get("order"),
                "created_at": _time(tag.get("create_time")),
                "deleted_at": None,
            }
            statement = insert(Tag).values(corp_id=corp_id, tag_id=tag["id"], **values)
            await session.execute(
                statement.on_conflict_do_update(index_elements=["corp_id", "tag_id"], set_=values)
            )
    now = func.now()
    await session.execute(
        update(TagGroup)
        .where(
            and_(
                TagGroup.corp_id == corp_id,
                TagGroup.deleted_at.is_(None),
                not_(TagGroup.group_id.in_(group_ids)),
            )
        )
        .values(deleted_at=now)
    )
    await session.execute(
        update(Tag)
        .where(
            and_(Tag.corp_id == corp_id, Tag.deleted_at.is_(None), not_(Tag.tag_id.in_(tag_ids)))
        )
        .values(deleted_at=now)
    )


# enrichment actions -----------------------------------------------------------------------


_ENRICHED_AT = {
    "contact": "SELECT enriched_at FROM external_contacts"
    " WHERE corp_id = $1 AND external_userid = $2",
    "group": "SELECT enriched_at FROM customer_groups WHERE corp_id = $1 AND chat_id = $2",
}


async def _fresh_since(run: WecomRun, what: str) -> bool:
    """Already enriched after this action was written (a burst of events for one customer
    writes one action each; the first one to run covers the rest). One prepared statement
    on the runner's pool: a session cost five times the query (bench/welcome.py)."""
    enriched = await run.db.fetchval(_ENRICHED_AT[what], run.corp_id, run.action.target)
    return enriched is not None and enriched >= run.action.created_at


def contact_enricher(writes: ContactWrites) -> WecomHandler:
    """The enrich_contact handler of a process, storing through its ContactWrites."""

    async def enrich_contact(run: WecomRun) -> Outcome:
        external_userid = run.action.target
        if await _fresh_since(run, "contact"):
            return Outcome(ActionStatus.SKIPPED, "already enriched after this change")
        asked_at = datetime.now(UTC)
        try:
            body = await run.client.call(
                run.credentials,
                "GET",
                "externalcontact/get",
                params={"external_userid": external_userid},
                deadline=run.deadline_monotonic,
            )
        except WecomApiError as exc:
            if exc.errcode == 84061:  # no relation left: the customer deleted every member
                return Outcome(ActionStatus.SKIPPED, "84061: no external-contact relation any more")
            raise
        await writes.store(run.corp_id, external_userid, body, asked_at)
        return Outcome(ActionStatus.SUCCEEDED)

    return enrich_contact


async def enrich_group(run: WecomRun) -> Outcome:
    if await _fresh_since(run, "group"):
        return Outcome(ActionStatus.SKIPPED, "already enriched after this change")
    body = await run.client.call(
        run.credentials,
        "POST",
        "externalcontact/groupchat/get",
        json={"chat_id": run.action.target, "need_name": 1},
        deadline=run.deadline_monotonic,
    )
    async with run.sessionmaker.begin() as session:
        await apply_group(session, run.corp_id, body["group_chat"])
    return Outcome(ActionStatus.SUCCEEDED)


async def sync_tags(run: WecomRun) -> Outcome:
    body = await run.client.call(
        run.credentials,
        "POST",
        "externalcontact/get_corp_tag_list",
        json={},
        deadline=run.deadline_monotonic,
    )
    async with run.sessionmaker.begin() as session:
        await apply_tags(session, run.corp_id, body.get("tag_group", []))
    return Outcome(ActionStatus.SUCCEEDED)
