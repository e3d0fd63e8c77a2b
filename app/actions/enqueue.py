"""Write an action row in the caller's transaction: the processor's (so the action exists
if and only if the event that caused it was processed) or an API request's."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NotRequired, TypedDict, Unpack

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import ActionKind, ActionStatus
from app.notify import ACTIONS_CHANNEL

# One round trip: insert unless the idempotency key exists, wake the action runners
# (delivered on commit, folded into one per transaction) only when a row was written, and
# answer the action's id either way.
ENQUEUE_SQL = text(
    """
    WITH inserted AS (
        INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key, event_id, payload,
                             deadline, status, reason, finished_at)
        VALUES (:kind, :app_id, :corp_id, :target, :idempotency_key, :event_id,
                CAST(:payload AS jsonb), :deadline, CAST(:status AS text), :reason,
                CASE WHEN CAST(:status AS text) = 'pending' THEN NULL ELSE now() END)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    )
    SELECT id, true AS created FROM inserted, LATERAL pg_notify(:channel, '')
    UNION ALL
    SELECT id, false FROM actions
    WHERE idempotency_key = :idempotency_key AND NOT EXISTS (SELECT FROM inserted)
    """
)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The action with that idempotency key, and whether this call wrote it. id is None
    only when another transaction wrote the same key and committed while this statement ran
    (the row is then outside this statement's snapshot)."""

    id: int | None
    created: bool


class NewAction(TypedDict):
    """What the caller says about the action it writes (enqueue, and the processor's
    deferred `defer_enqueue` in app/processing/writes.py).

    skipped: the action is recorded as already `skipped`, with this reason, so that "why
    did this customer get no welcome?" has an answer in the actions table too."""

    kind: ActionKind
    app_id: int | None
    corp_id: str | None
    target: str
    idempotency_key: str
    event_id: NotRequired[int | None]
    payload: NotRequired[dict[str, Any] | None]
    deadline: NotRequired[datetime | None]
    skipped: NotRequired[str | None]


def enqueue_params(**action: Unpack[NewAction]) -> dict[str, Any]:
    """ENQUEUE_SQL's parameters, also those of the processor's batch form of it."""
    skipped = action.get("skipped")
    return {
        "kind": action["kind"].value,
        "app_id": action["app_id"],
        "corp_id": action["corp_id"],
        "target": action["target"],
        "idempotency_key": action["idempotency_key"],
        "event_id": action.get("event_id"),
        "payload": json.dumps(action.get("payload") or {}),
        "channel": ACTIONS_CHANNEL,
        "deadline": action.get("deadline"),
        "status": ActionStatus.SKIPPED if skipped else ActionStatus.PENDING,
        "reason": skipped,
    }


async def enqueue(session: AsyncSession, **action: Unpack[NewAction]) -> Enqueued:
    """A second call with the same idempotency_key writes nothing: exactly one action."""
    connection = await session.connection()
    params = enqueue_params(**action)
    row = (await connection.execute(ENQUEUE_SQL, params)).first()
    if row is None:
        return Enqueued(None, False)
    return Enqueued(row.id, row.created)
