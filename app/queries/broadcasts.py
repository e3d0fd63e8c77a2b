"""Broadcasts as they are shown: the list, and one broadcast with its funnel.

The funnel is counted from the stored audience, one row per customer (or group):

    audience   every recipient resolved when the broadcast was made
    tasks      WeCom tasks made (one per member, more past WeCom's per-call limit)
    confirmed  of those, the ones the member has sent from their client
    sent / not_friend / over_limit / pending   WeCom's send status 1 / 2 / 3 / 0
    failed     WeCom would not take them: in a task's fail_list, or the task was refused

sent + not_friend + over_limit + failed + pending = audience, always.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ErrorCode, NotFound
from app.models import Broadcast, WecomApp

_FUNNEL = text(
    """
    SELECT r.userid,
           count(*) AS audience,
           count(*) FILTER (WHERE r.status = 'sent') AS sent,
           count(*) FILTER (WHERE r.status = 'not_friend') AS not_friend,
           count(*) FILTER (WHERE r.status = 'over_limit') AS over_limit,
           count(*) FILTER (WHERE r.status IN ('failed', 'unsendable')) AS failed,
           count(*) FILTER (WHERE r.status = 'pending') AS pending
    FROM broadcast_recipients r
    WHERE r.broadcast_id = :id
    GROUP BY r.userid
    ORDER BY r.userid
    """
)

_TASKS = text(
    """
    SELECT id, userid, chunk, recipients, action_id, status, msgid, adopted, fail_list,
           errcode, errmsg, created_at, confirmed_at, reminders
    FROM broadcast_tasks WHERE broadcast_id = :id ORDER BY userid, chunk
    """
)

# A failure's errcode, for those the funnel counts as failed: what WeCom said, per code.
_FAILURES = text(
    """
    SELECT CASE WHEN status = 'unsendable' THEN 'fail_list' ELSE 'wecom.' || errcode END AS why,
           count(*) AS n
    FROM broadcast_recipients
    WHERE broadcast_id = :id AND status IN ('failed', 'unsendable')
    GROUP BY 1 ORDER BY 2 DESC, 1
    """
)


@dataclass(frozen=True, slots=True)
class Funnel:
    audience: int = 0
    tasks: int = 0
    confirmed: int = 0
    sent: int = 0
    not_friend: int = 0
    over_limit: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(frozen=True, slots=True)
class TaskView:
    id: int
    userid: str
    chunk: int
    recipients: int
    action_id: int | None
    status: str
    msgid: str | None
    adopted: bool
    fail_list: tuple[str, ...]
    errcode: int | None
    errmsg: str | None
    created_at: datetime | None
    confirmed_at: datetime | None
    reminders: tuple[datetime, ...]


@dataclass(frozen=True, slots=True)
class MemberFunnel:
    """One member's part: the funnel of their recipients and their tasks."""

    userid: str
    funnel: Funnel
    tasks: tuple[TaskView, ...]


@dataclass(frozen=True, slots=True)
class BroadcastSummary:
    id: int
    app: str
    corp_id: str
    chat_type: str
    status: str
    audience: dict[str, Any]
    content: dict[str, Any]
    audience_size: int
    created_by: str | None
    created_at: datetime
    horizon_at: datetime
    cancelled_at: datetime | None
    completed_at: datetime | None
    polled_at: datetime | None
    poll_error: str | None


@dataclass(frozen=True, slots=True)
class BroadcastDetail:
    broadcast: BroadcastSummary
    funnel: Funnel
    failures: dict[str, int]  # why (`fail_list`, `wecom.41048`) → recipients
    members: tuple[MemberFunnel, ...]


def _summary(row: Broadcast, slug: str) -> BroadcastSummary:
    return BroadcastSummary(
        id=row.id,
        app=slug,
        corp_id=row.corp_id,
        chat_type=row.chat_type,
        status=row.status,
        audience=row.audience,
        content=row.content,
        audience_size=row.audience_size,
        created_by=row.created_by,
        created_at=row.created_at,
        horizon_at=row.horizon_at,
        cancelled_at=row.cancelled_at,
        completed_at=row.completed_at,
        polled_at=row.polled_at,
        poll_error=row.poll_error,
    )


async def list_broadcasts(
    session: AsyncSession,
    *,
    app: str | None = None,
    status: str | None = None,
    before_id: int | None,
    limit: int,
) -> list[BroadcastSummary]:
    query = select(Broadcast, WecomApp.slug).join(WecomApp, WecomApp.id == Broadcast.app_id)
    if app is not None:
        query = query.where(WecomApp.slug == app)
    if status is not None:
        query = query.where(Broadcast.status == status)
    if before_id is not None:
        query = query.where(Broadcast.id < before_id)
    rows = await session.execute(query.order_by(Broadcast.id.desc()).limit(limit))
    return [_summary(row, slug) for row, slug in rows]


async def get_broadcast(session: AsyncSession, broadcast_id: int) -> BroadcastDetail:
    found = (
        await session.execute(
            select(Broadcast, WecomApp.slug)
            .join(WecomApp, WecomApp.id == Broadcast.app_id)
            .where(Broadcast.id == broadcast_id)
        )
    ).one_or_none()
    if found is None:
        raise NotFound(f"no broadcast {broadcast_id}", code=ErrorCode.BROADCAST_NOT_FOUND)
    row, slug = found
    counted = {r.userid: r for r in await session.execute(_FUNNEL, {"id": broadcast_id})}
    tasks: dict[str, list[TaskView]] = {}
    for t in await session.execute(_TASKS, {"id": broadcast_id}):
        tasks.setdefault(t.userid, []).append(
            TaskView(
                id=t.id,
                userid=t.userid,
                chunk=t.chunk,
                recipients=t.recipients,
                action_id=t.action_id,
                status=t.status,
                msgid=t.msgid,
                adopted=t.adopted,
                fail_list=tuple(t.fail_list),
                errcode=t.errcode,
                errmsg=t.errmsg,
                created_at=t.created_at,
                confirmed_at=t.confirmed_at,
                reminders=tuple(t.reminders),
            )
        )
    members = tuple(
        MemberFunnel(
            userid,
            _funnel([counted[userid]] if userid in counted else [], tasks[userid]),
            tuple(tasks[userid]),
        )
        for userid in sorted(tasks)
    )
    every_task = [t for member in tasks.values() for t in member]
    failures = {r.why: r.n for r in await session.execute(_FAILURES, {"id": broadcast_id})}
    return BroadcastDetail(
        broadcast=_summary(row, slug),
        funnel=_funnel(list(counted.values()), every_task),
        failures=failures,
        members=members,
    )


def _funnel(counted: list[Any], tasks: list[TaskView]) -> Funnel:
    return Funnel(
        audience=sum(r.audience for r in counted),
        tasks=sum(1 for t in tasks if t.msgid is not None),
        confirmed=sum(1 for t in tasks if t.confirmed_at is not None),
        sent=sum(r.sent for r in counted),
        not_friend=sum(r.not_friend for r in counted),
        over_limit=sum(r.over_limit for r in counted),
        failed=sum(r.failed for r in counted),
        pending=sum(r.pending for r in counted),
    )
