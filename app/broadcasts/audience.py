"""Who a broadcast goes to, resolved from wecom-hub's own state (follows, tags, channel
states, groups), and how it is split into WeCom tasks.

WeCom sends a mass message on behalf of one member (`sender`), to that member's own
customers: each customer therefore goes to a member who follows them, and when several do,
to the one they added most recently (the relation most likely alive, and the one WeCom
itself prefers, CHANNELS-WEBHOOKS.md §4.1). A member's share is cut into tasks of at most
WeCom's per-call limit (10 000 external_userids, 2 000 chat_ids).

One SELECT yields (recipient, userid, chunk) for the whole audience, so creating a
broadcast stores it with INSERT … SELECT and a dry run counts it with GROUP BY: the
audience never passes through Python, however large.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Subquery,
    Text,
    any_,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.broadcasts.spec import AudienceSpec
from app.models import CustomerGroup, Follow

CUSTOMERS_PER_TASK = 10_000  # add_msg_template: external_userid, at most
GROUPS_PER_TASK = 2_000  # add_msg_template: chat_id_list, at most
UNMATCHED_SHOWN = 100


@dataclass(frozen=True, slots=True)
class MemberShare:
    userid: str
    recipients: int
    tasks: int


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a dry run answers: the audience size, per member, and the ids given one by one
    (external_userids, chat_ids) that it does not reach: not a friend of any member (any
    more), not matching the other criteria, unknown, or a dismissed group."""

    audience: int
    members: tuple[MemberShare, ...]
    unmatched: int
    unmatched_ids: tuple[str, ...]  # the first UNMATCHED_SHOWN of them


def per_task(spec: AudienceSpec) -> int:
    return GROUPS_PER_TASK if spec.chat_type == "group" else CUSTOMERS_PER_TASK


def recipients(corp_id: str, spec: AudienceSpec, *, per_task: int) -> Select[tuple[str, str, int]]:
    """(recipient, userid, chunk) for every customer or group of the audience."""
    picked = _groups(corp_id, spec) if spec.chat_type == "group" else _customers(corp_id, spec)
    number = func.row_number().over(partition_by=picked.c.userid, order_by=picked.c.recipient)
    return select(
        picked.c.recipient,
        picked.c.userid,
        # Postgres's / on integers truncates: the number of the member's task.
        (number - 1)
        .self_group()
        .op("/", return_type=Integer)(literal(per_task, Integer))
        .label("chunk"),
    )


def _one_of(column: InstrumentedAttribute[Any], values: list[str]) -> ColumnElement[bool]:
    """`column = ANY($1)`: the list is one array parameter. `IN (…)` binds one parameter per
    value, and asyncpg refuses a query past 32 767 of them: an explicit list of 100 000
    external_userids would be a 500."""
    return column == any_(literal(values, postgresql.ARRAY(Text)))


def _customers(corp_id: str, spec: AudienceSpec) -> Subquery:
    """Each customer once, with the member of their most recent matching follow."""
    conditions = [Follow.corp_id == corp_id, Follow.status == "active"]
    if spec.tags:
        # && (overlap) on the GIN index ix_follows_tag_ids: any of the tags.
        tag_ids = type_coerce(Follow.tag_ids, postgresql.ARRAY(Text))
        conditions.append(tag_ids.overlap(spec.tags))
    if spec.states:
        conditions.append(_one_of(Follow.state, spec.states))
    if spec.userids:
        conditions.append(_one_of(Follow.userid, spec.userids))
    if spec.added_since is not None:
        conditions.append(Follow.added_at >= spec.added_since)
    if spec.added_until is not None:
        conditions.append(Follow.added_at < spec.added_until)
    if spec.external_userids:
        conditions.append(_one_of(Follow.external_userid, spec.external_userids))
    return (
        select(Follow.external_userid.label("recipient"), Follow.userid.label("userid"))
        .where(*conditions)
        .ext(postgresql.distinct_on(Follow.external_userid))
        .order_by(Follow.external_userid, Follow.added_at.desc().nulls_last(), Follow.userid)
        .subquery("picked")
    )


def _groups(corp_id: str, spec: AudienceSpec) -> Subquery:
    """Each live group of the audience, with its owner (WeCom's sender for it)."""
    conditions = [
        CustomerGroup.corp_id == corp_id,
        CustomerGroup.dismissed_at.is_(None),
        CustomerGroup.owner.is_not(None),
    ]
    if spec.chat_ids:
        conditions.append(_one_of(CustomerGroup.chat_id, spec.chat_ids))
    if spec.owners:
        conditions.append(_one_of(CustomerGroup.owner, spec.owners))
    return (
        select(CustomerGroup.chat_id.label("recipient"), CustomerGroup.owner.label("userid"))
        .where(*conditions)
        .subquery("picked")
    )


async def resolve(session: AsyncSession, corp_id: str, spec: AudienceSpec) -> Resolved:
    """The audience counted per member, storing nothing."""
    everyone = recipients(corp_id, spec, per_task=per_task(spec)).subquery("audience")
    rows = (
        await session.execute(
            select(
                everyone.c.userid,
                func.count().label("recipients"),
                func.count(func.distinct(everyone.c.chunk)).label("tasks"),
            )
            .group_by(everyone.c.userid)
            .order_by(everyone.c.userid)
        )
    ).all()
    members = tuple(MemberShare(row.userid, row.recipients, row.tasks) for row in rows)
    given = spec.chat_ids if spec.chat_type == "group" else spec.external_userids
    unmatched: list[str] = []
    if given:
        ids = func.unnest(literal(list(dict.fromkeys(given)), postgresql.ARRAY(Text)))
        listed = ids.table_valued("id", with_ordinality="n").render_derived()
        unmatched = list(
            (
                await session.execute(
                    select(listed.c.id)
                    .where(listed.c.id.not_in(select(everyone.c.recipient)))
                    .order_by(listed.c.n)
                )
            ).scalars()
        )
    return Resolved(
        audience=sum(m.recipients for m in members),
        members=members,
        unmatched=len(unmatched),
        unmatched_ids=tuple(unmatched[:UNMATCHED_SHOWN]),
    )
