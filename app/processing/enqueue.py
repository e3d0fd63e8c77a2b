"""Write an action row. Called inside the processor's transaction, so the action exists if
and only if the event that caused it was processed."""

import json
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# One round trip: insert unless the idempotency key exists, and wake the action runners
# (delivered on commit, folded into one per transaction) only when a row was written.
# The channel is app.processing.notify.ACTIONS_CHANNEL.
_ENQUEUE = text(
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
    SELECT pg_notify('wecom_hub_actions', '') FROM inserted
    """
)


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    app_id: int,
    corp_id: str,
    target: str,
    idempotency_key: str,
    event_id: int | None = None,
    payload: dict[str, Any] | None = None,
    deadline: datetime | None = None,
    skipped: str | None = None,
) -> None:
    """A second call with the same idempotency_key does nothing: exactly one action.

    skipped: the action is recorded as already `skipped`, with this reason, so that "why
    did this customer get no welcome?" has an answer in the actions table too."""
    connection = await session.connection()
    await connection.execute(
        _ENQUEUE,
        {
            "kind": kind,
            "app_id": app_id,
            "corp_id": corp_id,
            "target": target,
            "idempotency_key": idempotency_key,
            "event_id": event_id,
            "payload": json.dumps(payload or {}),
            "deadline": deadline,
            "status": "skipped" if skipped else "pending",
            "reason": skipped,
        },
    )
