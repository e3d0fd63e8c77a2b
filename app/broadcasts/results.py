"""The broadcast_results action: read what WeCom did with a broadcast's tasks, until every
task is settled or the horizon passes; then the broadcast is `completed` and a
`broadcast.completed` webhook says so.

Each read is its own action, and schedules the next one (idempotency key
`broadcast_results:{id}:{n}`, due after a wait that doubles from broadcast_poll_seconds up
to broadcast_poll_max_seconds, never past the horizon): the action runner has no way yet
for an action to come back later without counting it a failure (docs/adr/0010). A read
never fails for WeCom's sake: whatever WeCom answers (41063 still distributing, -1, no
permission any more) is kept in `poll_error` and the next read tries again; only a bug
(`crash`) ends the chain, visibly, and retrying that action resumes it.

A task is settled when it was refused or skipped, or when its member has sent it (or it was
cancelled) and the results were read after that. Send status per recipient: 0 pending,
1 sent, 2 not_friend, 3 over_limit (the corp's receive limit, whatever it is now).
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import enqueue
from app.actions.kinds import ActionKind, ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomRun, wecom_error
from app.broadcasts import wire
from app.broadcasts.tasks import CANCELLED, DISTRIBUTING, WAITING
from app.notify import ACTIONS_CHANNEL
from app.queries.broadcasts import get_broadcast
from app.webhooks.events import Message, WebhookEventType
from app.webhooks.publish import publish
from app.wecom.errors import WecomApiError

SEND_STATUS = {0: "pending", 1: "sent", 2: "not_friend", 3: "over_limit"}

_BROADCAST = text(
    "SELECT id, app_id, corp_id, status, horizon_at, cancelled_at, completed_at "
    "FROM broadcasts WHERE id = :id"
)
_OPEN_TASKS = text(
    """
    SELECT id, userid, msgid, status, confirmed_at FROM broadcast_tasks
    WHERE broadcast_id = :id AND msgid IS NOT NULL
      AND (status = 'created' OR (status IN ('sent', 'cancelled') AND results_at IS NULL))
    ORDER BY userid, chunk
    """
)
_UNSETTLED = text(
    """
    SELECT count(*) FROM broadcast_tasks
    WHERE broadcast_id = :id
      AND (status IN ('pending', 'created')
           OR (status IN ('sent', 'cancelled') AND results_at IS NULL))
    """
)
# Sent is sent, even if a cancel came after it.
_CONFIRMED = text("UPDATE broadcast_tasks SET status = 'sent', confirmed_at = :at WHERE id = :id")
_TASK_CANCELLED = text("UPDATE broadcast_tasks SET status = 'cancelled' WHERE id = :id")
_RESULTS_READ = text("UPDATE broadcast_tasks SET results_at = now() WHERE id = :id")
_RECIPIENTS = text(
    """
    UPDATE broadcast_recipients r
    SET wecom_status = v.status,
        status = CASE v.status WHEN 0 THEN 'pending' WHEN 1 THEN 'sent'
                               WHEN 2 THEN 'not_friend' WHEN 3 THEN 'over_limit'
                               ELSE r.status END,
        send_time = CASE WHEN v.send_time > 0 THEN to_timestamp(v.send_time) END
    FROM unnest(CAST(:recipients AS text[]), CAST(:statuses AS int[]),
                CAST(:times AS bigint[])) AS v(recipient, status, send_time)
    WHERE r.broadcast_id = :broadcast_id AND r.recipient = v.recipient AND r.userid = :userid
      AND r.status NOT IN ('unsendable', 'failed')
    """
)
_POLLED = text("UPDATE broadcasts SET polled_at = now(), poll_error = :error WHERE id = :id")
_COMPLETE = text(
    """
    UPDATE broadcasts SET completed_at = now(),
        status = CASE WHEN status = 'cancelled' THEN status ELSE 'completed' END
    WHERE id = :id AND completed_at IS NULL
    RETURNING status
    """
)
_DUE_AT = text("UPDATE actions SET next_attempt_at = :at WHERE id = :id AND attempts = 0")
# A cancel (or anything else that wants the results soon) brings the next read forward.
_NOW = text(
    f"""
    WITH due AS (
        UPDATE actions SET next_attempt_at = now()
        WHERE kind = '{ActionKind.BROADCAST_RESULTS}' AND target = :target
          AND status = 'pending' AND next_attempt_at > now()
        RETURNING id
    )
    SELECT pg_notify('{ACTIONS_CHANNEL}', '') FROM due
    """  # noqa: S608 - constants only
)


def target(broadcast_id: int) -> str:
    """Every action of a broadcast has this target: GET /api/v1/actions?target=… lists them."""
    return f"broadcast:{broadcast_id}"


async def schedule_poll(
    session: AsyncSession,
    *,
    broadcast_id: int,
    app_id: int,
    corp_id: str,
    poll: int,
    at: datetime,
    poll_seconds: float,
    poll_max_seconds: float,
) -> None:
    """Enqueue read number `poll`, due at `at`, in the caller's transaction (once: a second
    call for the same number writes nothing)."""
    enqueued = await enqueue(
        session,
        kind=ActionKind.BROADCAST_RESULTS,
        app_id=app_id,
        corp_id=corp_id,
        target=target(broadcast_id),
        idempotency_key=f"broadcast_results:{broadcast_id}:{poll}",
        payload={
            "broadcast_id": broadcast_id,
            "poll": poll,
            "poll_seconds": poll_seconds,
            "poll_max_seconds": poll_max_seconds,
        },
    )
    if enqueued.created:
        await session.execute(_DUE_AT, {"id": enqueued.id, "at": at})


async def poll_soon(session: AsyncSession, broadcast_id: int) -> None:
    await session.execute(_NOW, {"target": target(broadcast_id)})


async def poll_results(run: WecomRun) -> Outcome:
    """The action's handler (ActionKind.BROADCAST_RESULTS)."""
    payload = run.action.payload
    broadcast_id, poll = int(payload["broadcast_id"]), int(payload["poll"])
    async with run.sessionmaker() as session:
        broadcast = (await session.execute(_BROADCAST, {"id": broadcast_id})).first()
        tasks = list(await session.execute(_OPEN_TASKS, {"id": broadcast_id}))
    if broadcast is None:
        return Outcome(ActionStatus.SKIPPED, "the broadcast no longer exists")
    if broadcast.completed_at is not None:
        return Outcome(ActionStatus.SKIPPED, "the broadcast is already completed")
    problems: list[str] = []
    for task in tasks:
        try:
            await _read_task(run, broadcast_id, task)
        except WecomApiError as exc:
            if exc.errcode != DISTRIBUTING:  # 41063: not readable yet, and that is normal
                error = wecom_error(exc)
                problems.append(f"{task.userid} {task.msgid}: {error.code} {error.message}")
    now = datetime.now(UTC)
    async with run.sessionmaker.begin() as session:
        await session.execute(WAITING, {"id": broadcast_id})
        await session.execute(
            _POLLED, {"id": broadcast_id, "error": "; ".join(problems)[:2000] or None}
        )
        unsettled = int((await session.execute(_UNSETTLED, {"id": broadcast_id})).scalar_one())
        if unsettled and now < broadcast.horizon_at:
            wait = min(float(payload["poll_seconds"]) * 2**poll, float(payload["poll_max_seconds"]))
            at = min(now + timedelta(seconds=wait), broadcast.horizon_at)
            await schedule_poll(
                session,
                broadcast_id=broadcast_id,
                app_id=broadcast.app_id,
                corp_id=broadcast.corp_id,
                poll=poll + 1,
                at=at,
                poll_seconds=float(payload["poll_seconds"]),
                poll_max_seconds=float(payload["poll_max_seconds"]),
            )
            return Outcome(
                ActionStatus.SUCCEEDED,
                f"{unsettled} task(s) not settled yet; next read at {at.isoformat()}",
            )
        await _complete(session, broadcast_id, broadcast.app_id, broadcast.corp_id)
    why = "every task settled" if not unsettled else "the horizon passed"
    return Outcome(ActionStatus.SUCCEEDED, f"completed: {why}")


async def _read_task(run: WecomRun, broadcast_id: int, task: Any) -> None:
    """Whether the member has sent it, and then what each recipient got."""
    confirmed_at = task.confirmed_at
    cancelled = task.status == "cancelled"
    try:
        async for page in wire.pages(
            run.client,
            run.credentials,
            "get_groupmsg_task",
            {"msgid": task.msgid, "limit": 1000},
            "task_list",
        ):
            for row in page:
                if row.get("userid") == task.userid and row.get("status") == 2:
                    confirmed_at = datetime.fromtimestamp(int(row.get("send_time") or 0), UTC)
    except WecomApiError as exc:
        if exc.errcode != CANCELLED:
            raise
        cancelled = True  # cancelled at WeCom, by us or in the admin console
    if confirmed_at is None and not cancelled:
        return
    rows: list[dict[str, Any]] = []
    try:
        async for page in wire.pages(
            run.client,
            run.credentials,
            "get_groupmsg_send_result",
            {"msgid": task.msgid, "userid": task.userid, "limit": 1000},
            "send_list",
        ):
            rows += page
    except WecomApiError as exc:
        if exc.errcode != CANCELLED:
            raise
    async with run.sessionmaker.begin() as session:
        if confirmed_at is not None and task.confirmed_at is None:
            await session.execute(_CONFIRMED, {"id": task.id, "at": confirmed_at})
        if cancelled and task.status != "cancelled" and confirmed_at is None:
            await session.execute(_TASK_CANCELLED, {"id": task.id})
        recipients = [str(r.get("external_userid") or r.get("chat_id") or "") for r in rows]
        await session.execute(
            _RECIPIENTS,
            {
                "broadcast_id": broadcast_id,
                "userid": task.userid,
                "recipients": recipients,
                "statuses": [int(r.get("status") or 0) for r in rows],
                "times": [int(r.get("send_time") or 0) for r in rows],
            },
        )
        await session.execute(_RESULTS_READ, {"id": task.id})


async def _complete(session: AsyncSession, broadcast_id: int, app_id: int, corp_id: str) -> None:
    """The broadcast is over: say so, with its funnel, to whoever subscribes."""
    status = (await session.execute(_COMPLETE, {"id": broadcast_id})).scalar_one_or_none()
    if status is None:
        return  # another read completed it
    detail = await get_broadcast(session, broadcast_id)
    funnel = detail.funnel
    await publish(
        session,
        Message(
            id=f"msg_broadcast{broadcast_id}_broadcast_completed",
            type=WebhookEventType.BROADCAST_COMPLETED,
            timestamp=datetime.now(UTC),
            data={
                "broadcast_id": broadcast_id,
                "corp_id": corp_id,
                "app": detail.broadcast.app,
                "status": status,
                "funnel": {
                    "audience": funnel.audience,
                    "tasks": funnel.tasks,
                    "confirmed": funnel.confirmed,
                    "sent": funnel.sent,
                    "not_friend": funnel.not_friend,
                    "over_limit": funnel.over_limit,
                    "failed": funnel.failed,
                    "pending": funnel.pending,
                },
            },
        ),
        app_id=app_id,
        corp_id=corp_id,
    )
