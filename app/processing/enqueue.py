"""Write an action row. Called inside the processor's transaction, so the action exists if
and only if the event that caused it was processed."""

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Action
from app.processing.notify import ACTIONS_CHANNEL


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
) -> None:
    """A second call with the same idempotency_key does nothing: exactly one action."""
    statement = insert(Action).values(
        kind=kind,
        app_id=app_id,
        corp_id=corp_id,
        target=target,
        idempotency_key=idempotency_key,
        event_id=event_id,
        payload=payload or {},
        deadline=deadline,
    )
    await session.execute(statement.on_conflict_do_nothing(index_elements=["idempotency_key"]))
    # Delivered on commit, folded into one per transaction: the action runner wakes at once.
    await session.execute(select(func.pg_notify(ACTIONS_CHANNEL, "")))
