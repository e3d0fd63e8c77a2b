"""Actions, newest first, and one action with every attempt: "why did this customer get
no welcome?" is a status, a reason and an error here."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import status_filter_sql, status_sql
from app.errors import ErrorCode, NotFound
from app.queries import keyset_page_sql


@dataclass(frozen=True, slots=True)
class ActionFilters:
    kind: str | None = None
    status: str | None = None
    app_id: int | None = None
    external_userid: str | None = None
    target: str | None = None  # a webhook subscription's id, for its deliveries


@dataclass(frozen=True, slots=True)
class ActionSummary:
    id: int
    kind: str
    app: str | None
    target: str
    event_id: int | None
    status: str
    reason: str | None
    error_code: str | None
    error_message: str | None
    attempts: int
    wecom_calls: int
    deadline: datetime | None
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt: int
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    outcome: str
    error_code: str | None
    message: str | None
    http_status: int | None
    response: str | None
    wecom_calls: int


@dataclass(frozen=True, slots=True)
class ActionDetail:
    action: ActionSummary
    payload: dict[str, Any]
    idempotency_key: str
    attempts: list[Attempt]


_COLUMNS = f"""
    x.id, x.kind, a.slug AS app, x.target, x.event_id, {status_sql("x")} AS status, x.reason,
    x.error_code, x.error_message, x.attempts, x.wecom_calls, x.deadline, x.next_attempt_at,
    x.created_at, x.finished_at
"""
_FROM = "actions x LEFT JOIN apps a ON a.id = x.app_id"
_FILTERS = {
    "kind": "x.kind = :kind",
    "status": status_filter_sql("x", "status"),
    "app_id": "x.app_id = :app_id",
    "external_userid": "x.target = :external_userid",
    "target": "x.target = :target",
}


async def list_actions(
    session: AsyncSession, filters: ActionFilters, *, before_id: int | None, limit: int
) -> list[ActionSummary]:
    query, params = keyset_page_sql(
        f"SELECT {_COLUMNS} FROM {_FROM}",  # noqa: S608 - fixed fragments
        id_column="x.id",
        conditions=_FILTERS,
        filters=filters,
        before_id=before_id,
        limit=limit,
    )
    rows = await session.execute(text(query), params)
    return [ActionSummary(**row._mapping) for row in rows]


async def actions_of_event(session: AsyncSession, event_id: int) -> list[ActionSummary]:
    rows = await session.execute(
        text(f"SELECT {_COLUMNS} FROM {_FROM} WHERE x.event_id = :id ORDER BY x.id"),  # noqa: S608
        {"id": event_id},
    )
    return [ActionSummary(**row._mapping) for row in rows]


async def get_action(session: AsyncSession, action_id: int) -> ActionDetail:
    row = (
        await session.execute(
            text(
                f"SELECT {_COLUMNS}, x.payload, x.idempotency_key"  # noqa: S608
                f" FROM {_FROM} WHERE x.id = :id"
            ),
            {"id": action_id},
        )
    ).first()
    if row is None:
        raise NotFound(f"no action {action_id}", code=ErrorCode.ACTION_NOT_FOUND)
    values = dict(row._mapping)
    payload, key = values.pop("payload"), values.pop("idempotency_key")
    attempts = await session.execute(
        text(
            "SELECT attempt, started_at, finished_at, duration_ms, outcome, error_code, message,"
            " http_status, response, wecom_calls"
            " FROM action_attempts WHERE action_id = :id ORDER BY id"
        ),
        {"id": action_id},
    )
    return ActionDetail(
        ActionSummary(**values), payload, key, [Attempt(**a._mapping) for a in attempts]
    )
