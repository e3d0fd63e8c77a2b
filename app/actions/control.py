"""What a person (over the API) may do to an action: try a finished one again, or cancel
one that has not started. Both take a session and never commit."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import ActionKind, ActionStatus, status_sql
from app.errors import Conflict, ErrorCode, NotFound
from app.notify import ACTIONS_CHANNEL

_REQUEUE = (
    "UPDATE actions SET status = 'pending', attempts = 0, next_attempt_at = now(),"
    " finished_at = NULL, reason = :reason, locked_by = NULL, locked_until = NULL"
)
RETRYABLE = frozenset({ActionStatus.FAILED, ActionStatus.EXPIRED, ActionStatus.CANCELLED})

_LOCK = (
    f"SELECT kind, {status_sql('actions')} AS status, deadline FROM actions"  # noqa: S608
    " WHERE id = :id FOR UPDATE"
)


class ActionConflict(Conflict):
    """The action is not in a state that allows this; detail says which and why."""


async def _locked(session: AsyncSession, action_id: int) -> tuple[ActionKind, str, datetime | None]:
    row = (await session.execute(text(_LOCK), {"id": action_id})).first()
    if row is None:
        raise NotFound(f"no action {action_id}", code=ErrorCode.ACTION_NOT_FOUND)
    return ActionKind(row.kind), row.status, row.deadline


async def requeue(session: AsyncSession, where: str, params: dict[str, Any], *, reason: str) -> int:
    """Put the actions `where` selects back to pending, due now, and wake the runners; how
    many. attempts restart, so the kind's retry policy counts from here; the attempts log
    keeps the earlier ones. `where` is a fixed SQL fragment of the caller's; values go in
    `params`."""
    # `where` is a fixed fragment of the caller's; values are bound.
    requeued = f"{_REQUEUE} WHERE {where} RETURNING id"
    rows = await session.execute(text(requeued), {**params, "reason": reason})
    count = len(rows.all())
    if count:
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": ACTIONS_CHANNEL})
    return count


async def retry(session: AsyncSession, action_id: int, *, by: str) -> None:
    """Run a failed, expired or cancelled action again, now. Not past its deadline: a
    welcome_code lives 20 s, and WeCom would refuse it (the reason says so)."""
    kind, status, deadline = await _locked(session, action_id)
    if status not in RETRYABLE:
        raise ActionConflict(
            f"action {action_id} is {status}; only {', '.join(sorted(RETRYABLE))} ones can be"
            " retried",
            code=ErrorCode.ACTION_NOT_RETRYABLE,
        )
    if deadline is not None and deadline <= datetime.now(UTC):
        what = "the welcome code expired" if kind == ActionKind.WELCOME else "its deadline passed"
        raise ActionConflict(
            f"action {action_id} cannot be retried: {what} at {deadline.isoformat()}",
            code=ErrorCode.DEADLINE_PASSED,
        )
    await requeue(session, "id = :id", {"id": action_id}, reason=f"retried by {by}")


async def cancel(session: AsyncSession, action_id: int, *, by: str) -> None:
    """Cancel an action that is waiting (for its first attempt or a retry). A running one
    cannot be stopped halfway: its call may already have reached WeCom."""
    _, status, _ = await _locked(session, action_id)
    if status != ActionStatus.PENDING:
        raise ActionConflict(
            f"action {action_id} is {status}; only pending ones can be cancelled",
            code=ErrorCode.ACTION_NOT_CANCELLABLE,
        )
    await session.execute(
        text(
            "UPDATE actions SET status = 'cancelled', finished_at = now(), reason = :reason"
            " WHERE id = :id"
        ),
        {"id": action_id, "reason": f"cancelled by {by}"},
    )
