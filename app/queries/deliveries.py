"""A webhook subscription's deliveries, newest first: actions of kind `webhook` whose
target is the subscription."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import ActionKind, status_filter_sql, status_sql
from app.errors import ErrorCode, NotFound
from app.queries import keyset_page_sql
from app.queries.actions import Attempt, get_action


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    message_id: str
    type: str
    event_id: int | None
    status: str
    attempts: int
    error_code: str | None
    error_message: str | None
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    delivery: Delivery
    message: dict[str, Any]
    attempts: list[Attempt]


_COLUMNS = f"""
    id, payload ->> 'message_id' AS message_id, payload -> 'message' ->> 'type' AS type,
    event_id, {status_sql("actions")} AS status, attempts, error_code, error_message,
    next_attempt_at, created_at, finished_at
"""


@dataclass(frozen=True, slots=True)
class _Filters:
    status: str | None


async def list_deliveries(
    session: AsyncSession,
    webhook_id: int,
    *,
    status: str | None,
    before_id: int | None,
    limit: int,
) -> list[Delivery]:
    query, params = keyset_page_sql(
        f"SELECT {_COLUMNS} FROM actions WHERE kind = :kind AND target = :target",  # noqa: S608
        id_column="id",
        conditions={"status": status_filter_sql("actions", "status")},
        filters=_Filters(status),
        before_id=before_id,
        limit=limit,
    )
    params |= {"kind": ActionKind.WEBHOOK.value, "target": str(webhook_id)}
    rows = await session.execute(text(query), params)
    return [Delivery(**row._mapping) for row in rows]


async def get_delivery(session: AsyncSession, webhook_id: int, delivery_id: int) -> DeliveryDetail:
    try:
        detail = await get_action(session, delivery_id)
    except NotFound:
        detail = None
    if (
        detail is None
        or detail.action.kind != ActionKind.WEBHOOK
        or detail.action.target != str(webhook_id)
    ):
        raise NotFound(
            f"no delivery {delivery_id} of webhook {webhook_id}",
            code=ErrorCode.DELIVERY_NOT_FOUND,
        )
    action, message = detail.action, detail.payload["message"]
    return DeliveryDetail(
        Delivery(
            id=action.id,
            message_id=detail.payload["message_id"],
            type=message["type"],
            event_id=action.event_id,
            status=action.status,
            attempts=action.attempts,
            error_code=action.error_code,
            error_message=action.error_message,
            next_attempt_at=action.next_attempt_at,
            created_at=action.created_at,
            finished_at=action.finished_at,
        ),
        message,
        detail.attempts,
    )
