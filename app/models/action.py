"""Side effects, one row each: written in the processor's transaction, run by the action
runner (app/actions/runner.py), every attempt and outcome visible."""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class Action(Base):
    """status: pending → succeeded | failed | expired | skipped | cancelled. A claimed action
    stays pending, with a lease (locked_by, locked_until): shown as running
    (app/actions/kinds.py status_sql), stored so that a claim is a HOT update (ADR 0008).

    idempotency_key is unique: writing the same action twice (a duplicate event, a second
    replica) is a no-op. deadline is when trying stops (a welcome_code lives 20 s)."""

    __tablename__ = "actions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # A WeCom action is made as an app; an action of another kind (a webhook) may have none.
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id", ondelete="RESTRICT"))
    corp_id: Mapped[str | None] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    # Old events are deleted (retention, app/housekeeping.py); their actions stay.
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"))
    idempotency_key: Mapped[str] = mapped_column(String(256), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(server_default="0")
    # HTTP requests sent to WeCom by all its attempts (the sum over action_attempts), the
    # WeCom client's retries within a pass included; attempts counts passes of the runner.
    wecom_calls: Mapped[int] = mapped_column(server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deadline: Mapped[datetime | None]
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None]
    # The last error seen, in the action vocabulary (app/actions/errors.py): `wecom.45009`
    # with WeCom's errmsg, `http.503`, `timeout`, `crash`…; kept when a retry then succeeds.
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        # Running is shown, never stored (since migration 0018): a runner of an older version,
        # which would still store it, has its claim refused during a rolling deploy instead
        # of taking over actions the newer runners hold by lease alone.
        CheckConstraint("status <> 'running'", name="status_not_running"),
        # In the claim's own order (earliest deadline first), so a claim reads LIMIT rows
        # of the index instead of sorting the whole backlog each time.
        Index(
            "ix_actions_due",
            "deadline",
            "next_attempt_at",
            "id",
            # 'running' in it is of the past (see the check above), left so that the
            # migration did not rebuild the index.
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
        Index("ix_actions_event_id", "event_id"),
        # The API's lists: newest first, by kind, status or customer.
        Index("ix_actions_kind_id", "kind", "id"),
        Index("ix_actions_status_id", "status", "id"),
        Index("ix_actions_target_id", "target", "id"),
    )
