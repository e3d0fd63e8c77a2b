"""The broadcast_task action: one externalcontact/add_msg_template call, made once.

add_msg_template is not idempotent at WeCom: a second call makes a second task, and the
member would be asked to send the broadcast twice. So:

- the call is made with no retry inside the WeCom client (max_attempts=1), and the instant
  before it goes out is committed first (`first_attempt_at`);
- when it fails without a clear answer (a timeout, an HTTP error, -1 "system busy": the
  request may have reached WeCom, which may have made the task), the action is retried,
  and every attempt after one that went out *first looks for the task it may have made*:
  get_groupmsg_list_v2 (corp-made, since the first attempt, same chat type), those with the
  same text and attachment kinds and not already ours, then get_groupmsg_task for this
  member and, for customers, get_groupmsg_send_result naming this task's customers (whose
  missing ones are its fail_list). A task found is adopted (`adopted = true`), never made
  again;
- while WeCom is still distributing a new task (41063) it cannot be seen: the attempt is
  retried later rather than taking "not found" for an answer;
- a cancel can come between an attempt whose answer was lost and the next one: that next
  attempt still looks for the task, and cancels it at WeCom if it finds it, or the member
  would be asked to send a broadcast the operator stopped;
- a task that cannot be recorded (another runner, whose lease this one outlived, recorded
  its own first) is cancelled at WeCom at once: two tasks for one member is the thing to
  avoid, and only the recorded one is read and reminded.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from app.actions.errors import ActionError
from app.actions.kinds import ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomRun, wecom_error
from app.broadcasts import wire
from app.broadcasts.spec import BroadcastContent
from app.wecom.errors import WecomApiError

DISTRIBUTING = 41063  # "being distributed, try again later"
NOTHING_TO_SEND = 41048  # no customer WeCom could send to
CANCELLED = 41093
# WeCom's clock and ours: a task made "before" our first attempt by this much is still ours.
CLOCK_MARGIN = timedelta(minutes=5)
LIST_WINDOW = timedelta(days=30)  # get_groupmsg_list_v2 takes at most a month

_LOAD = text(
    """
    SELECT t.id, t.broadcast_id, t.userid, t.chunk, t.status, t.msgid, t.first_attempt_at,
           b.chat_type, b.content, b.cancelled_at, b.completed_at
    FROM broadcast_tasks t JOIN broadcasts b ON b.id = t.broadcast_id
    WHERE t.id = :id
    """
)
_RECIPIENTS = text(
    """
    SELECT recipient FROM broadcast_recipients
    WHERE broadcast_id = :broadcast_id AND userid = :userid AND chunk = :chunk
    ORDER BY recipient
    """
)
_ATTEMPTING = text(
    "UPDATE broadcast_tasks SET first_attempt_at = coalesce(first_attempt_at, now()) WHERE id = :id"
)
_OURS = text("SELECT msgid FROM broadcast_tasks WHERE msgid = ANY(CAST(:msgids AS text[]))")
_LOCK_BROADCAST = text("SELECT cancelled_at FROM broadcasts WHERE id = :id FOR UPDATE")
_MADE = text(
    """
    UPDATE broadcast_tasks
    SET msgid = :msgid, fail_list = CAST(:fail_list AS text[]), adopted = :adopted,
        status = CASE WHEN :cancelled THEN 'cancelled' ELSE 'created' END,
        created_at = now(), errcode = NULL, errmsg = NULL
    WHERE id = :id AND msgid IS NULL
    """
)
_UNSENDABLE = text(
    """
    UPDATE broadcast_recipients SET status = 'unsendable'
    WHERE broadcast_id = :broadcast_id AND userid = :userid AND chunk = :chunk
      AND recipient = ANY(CAST(:fail_list AS text[]))
    """
)
_REFUSED = text(
    "UPDATE broadcast_tasks SET status = :status, errcode = :errcode, errmsg = :errmsg "
    "WHERE id = :id AND msgid IS NULL"
)
_RECIPIENTS_REFUSED = text(
    """
    UPDATE broadcast_recipients SET status = :status, errcode = :errcode
    WHERE broadcast_id = :broadcast_id AND userid = :userid AND chunk = :chunk
      AND status = 'pending'
    """
)
_SKIPPED = text("UPDATE broadcast_tasks SET status = 'skipped' WHERE id = :id AND msgid IS NULL")
# Every task made (or given up): the broadcast now waits for its members.
WAITING = text(
    """
    UPDATE broadcasts SET status = 'waiting'
    WHERE id = :id AND status = 'sending'
      AND NOT EXISTS (SELECT FROM broadcast_tasks WHERE broadcast_id = :id AND status = 'pending')
    """
)


async def create_task(run: WecomRun) -> Outcome:
    """The action's handler (ActionKind.BROADCAST_TASK)."""
    async with run.sessionmaker() as session:
        task = (await session.execute(_LOAD, {"id": int(run.action.payload["task_id"])})).first()
        recipients: list[str] = []
        if task is not None:
            recipients = list(
                (
                    await session.execute(
                        _RECIPIENTS,
                        {
                            "broadcast_id": task.broadcast_id,
                            "userid": task.userid,
                            "chunk": task.chunk,
                        },
                    )
                ).scalars()
            )
    if task is None:
        return Outcome(ActionStatus.SKIPPED, "the broadcast no longer exists")
    if task.msgid is not None and task.status == "cancelled":
        # An earlier attempt recorded the task as cancelled (the broadcast was cancelled
        # while it was being made), then failed to cancel it at WeCom: do that now.
        await _cancel_at_wecom(run, task.msgid)
        return Outcome(ActionStatus.SUCCEEDED, f"task {task.msgid} cancelled at WeCom")
    if task.msgid is not None:
        return Outcome(ActionStatus.SUCCEEDED, f"task {task.msgid} was already made")
    if task.status != "pending":
        return Outcome(ActionStatus.SKIPPED, f"the task is {task.status}")
    content = BroadcastContent.model_validate(task.content)
    if task.cancelled_at is not None or task.completed_at is not None:
        why = "cancelled" if task.cancelled_at is not None else "completed (its horizon passed)"
        if task.first_attempt_at is not None:
            # An earlier attempt may have made it, its answer lost: find it and cancel it.
            found = await _find_made(run, task, content, set(recipients))
            if found is not None:
                return await _made(run, task, found[0], found[1], adopted=True, stop=True)
        async with run.sessionmaker.begin() as session:
            await session.execute(_SKIPPED, {"id": task.id})
            await session.execute(WAITING, {"id": task.broadcast_id})
        return Outcome(ActionStatus.SKIPPED, f"the broadcast was {why} before this task was made")
    if task.first_attempt_at is not None:
        found = await _find_made(run, task, content, set(recipients))
        if found is not None:
            return await _made(run, task, found[0], found[1], adopted=True)
    body: dict[str, Any] = {
        "chat_type": task.chat_type,
        "sender": task.userid,
        "external_userid" if task.chat_type == "single" else "chat_id_list": recipients,
        **await wire.message(run, content),
    }
    async with run.sessionmaker.begin() as session:
        await session.execute(_ATTEMPTING, {"id": task.id})
    try:
        answer = await run.client.call(
            run.credentials,
            "POST",
            "externalcontact/add_msg_template",
            json=body,
            max_attempts=1,  # a retry here could make a second task: the action retries
        )
    except WecomApiError as exc:
        if exc.retryable:
            error = wecom_error(exc)
            raise ActionError(
                error.code,
                f"{error.message}; WeCom may have made the task: the next attempt looks "
                "for it before making one",
                retryable=True,
            ) from exc
        return await _refused(run, task, exc)
    return await _made(
        run, task, str(answer["msgid"]), list(answer.get("fail_list") or []), adopted=False
    )


async def _find_made(
    run: WecomRun, task: Any, content: BroadcastContent, recipients: set[str]
) -> tuple[str, list[str]] | None:
    """The msgid (and fail_list) of the task an earlier attempt made, if WeCom has one: see
    the module's docstring. ActionError (retry later) while WeCom still distributes one."""
    now = datetime.now(UTC)
    start = max(task.first_attempt_at - CLOCK_MARGIN, now - LIST_WINDOW)
    wanted = content.fingerprint()
    candidates: list[str] = []
    try:
        async for page in wire.pages(
            run.client,
            run.credentials,
            "get_groupmsg_list_v2",
            {
                "chat_type": task.chat_type,
                "start_time": int(start.timestamp()),
                "end_time": int((now + CLOCK_MARGIN).timestamp()),
                "filter_type": 0,  # made by the corp (API), not by members
                "limit": 100,
            },
            "group_msg_list",
        ):
            candidates += [
                str(m["msgid"])
                for m in page
                if (
                    (m.get("text") or {}).get("content") or None,
                    tuple(a.get("msgtype") for a in m.get("attachments") or []),
                )
                == wanted
            ]
        if not candidates:
            return None
        async with run.sessionmaker() as session:
            ours = set((await session.execute(_OURS, {"msgids": candidates})).scalars())
        for msgid in (c for c in candidates if c not in ours):
            fail_list = await _for_this_task(run, task, msgid, recipients)
            if fail_list is not None:
                return msgid, fail_list
    except WecomApiError as exc:
        if exc.errcode == DISTRIBUTING:
            raise ActionError(
                "wecom.41063",
                "WeCom is still distributing a mass message; looking for the task an "
                "earlier attempt may have made again later",
                retryable=True,
                retry_after=timedelta(seconds=2),
            ) from exc
        raise
    return None


async def _for_this_task(
    run: WecomRun, task: Any, msgid: str, recipients: set[str]
) -> list[str] | None:
    """None unless `msgid` is this member's task and (for customers) names this task's
    customers: the same text may well go to the same member in two broadcasts, or two
    chunks. Else its fail_list, as far as it can be known: this task's customers that
    WeCom's task does not name (groups: not knowable, results name only groups sent to)."""
    member = False
    async for page in wire.pages(
        run.client,
        run.credentials,
        "get_groupmsg_task",
        {"msgid": msgid, "limit": 1000},
        "task_list",
    ):
        member = member or any(row.get("userid") == task.userid for row in page)
    if not member:
        return None
    if task.chat_type == "group":
        return []  # the member's groups are all this task could be
    named: set[str] = set()
    async for page in wire.pages(
        run.client,
        run.credentials,
        "get_groupmsg_send_result",
        {"msgid": msgid, "userid": task.userid, "limit": 1000},
        "send_list",
    ):
        named |= {str(row.get("external_userid")) for row in page}
    if not named & recipients:
        return None
    return sorted(recipients - named)


async def _made(
    run: WecomRun,
    task: Any,
    msgid: str,
    fail_list: list[str],
    *,
    adopted: bool,
    stop: bool = False,
) -> Outcome:
    """Record the task; if the broadcast was cancelled meanwhile (or `stop`: it is over),
    cancel it at WeCom too. Under the broadcast's row lock, so a cancel either sees the
    msgid (and cancels it) or is seen here."""
    async with run.sessionmaker.begin() as session:
        stopped = (await session.execute(_LOCK_BROADCAST, {"id": task.broadcast_id})).first()
        cancelled = stop or stopped is None or stopped.cancelled_at is not None
        recorded = await session.execute(
            _MADE,
            {
                "id": task.id,
                "msgid": msgid,
                "fail_list": fail_list,
                "adopted": adopted,
                "cancelled": cancelled,
            },
        )
        duplicate = not recorded.rowcount  # type: ignore[attr-defined]  # a CursorResult
        if fail_list and not duplicate:
            await session.execute(
                _UNSENDABLE,
                {
                    "broadcast_id": task.broadcast_id,
                    "userid": task.userid,
                    "chunk": task.chunk,
                    "fail_list": fail_list,
                },
            )
        await session.execute(WAITING, {"id": task.broadcast_id})
    if duplicate:
        await _cancel_at_wecom(run, msgid)
        return Outcome(
            ActionStatus.SUCCEEDED,
            f"task {msgid} was made, but another attempt had recorded one first: "
            f"{msgid} was cancelled at WeCom",
        )
    how = "found after a lost answer" if adopted else "made"
    unsendable = f", {len(fail_list)} in its fail_list" if fail_list else ""
    if cancelled:
        await _cancel_at_wecom(run, msgid)
        return Outcome(
            ActionStatus.SUCCEEDED,
            f"task {msgid} {how}, then cancelled: the broadcast was cancelled meanwhile",
        )
    return Outcome(ActionStatus.SUCCEEDED, f"task {msgid} {how} for {task.userid}{unsendable}")


async def _cancel_at_wecom(run: WecomRun, msgid: str) -> None:
    """cancel_groupmsg_send; 41093 (already cancelled) is what was wanted."""
    try:
        await run.client.call(
            run.credentials, "POST", "externalcontact/cancel_groupmsg_send", json={"msgid": msgid}
        )
    except WecomApiError as exc:
        if exc.errcode != CANCELLED:
            raise


async def _refused(run: WecomRun, task: Any, exc: WecomApiError) -> Outcome:
    """WeCom said no, clearly: nothing was made, and trying again would be refused again.
    41048 (no customer it could send to) is the audience's state, not a fault."""
    nobody = exc.errcode == NOTHING_TO_SEND
    async with run.sessionmaker.begin() as session:
        await session.execute(
            _REFUSED,
            {"id": task.id, "status": "failed", "errcode": exc.errcode, "errmsg": exc.errmsg},
        )
        await session.execute(
            _RECIPIENTS_REFUSED,
            {
                "broadcast_id": task.broadcast_id,
                "userid": task.userid,
                "chunk": task.chunk,
                "status": "unsendable" if nobody else "failed",
                "errcode": exc.errcode,
            },
        )
        await session.execute(WAITING, {"id": task.broadcast_id})
    if nobody:
        return Outcome(
            ActionStatus.SKIPPED,
            f"{exc.errcode}: WeCom found no customer to send to ({exc.errmsg})",
        )
    raise wecom_error(exc) from exc
