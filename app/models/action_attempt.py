"""One row per attempt of an action: when it ran, how long, what came of it."""

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, SmallInteger, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class ActionAttempt(Base):
    """outcome: succeeded, skipped, failed, retry (failed, will be tried again), expired, or
    lease_lost (a runner finished after another had taken the action over).
    error_code is the action vocabulary's (`wecom.45009`, `http.503`, `timeout`, …)."""

    __tablename__ = "action_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    action_id: Mapped[int] = mapped_column(ForeignKey("actions.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime] = mapped_column(server_default=func.now())
    duration_ms: Mapped[float]
    outcome: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    # What the other side answered, where it is HTTP of our choosing (a webhook receiver):
    # its status and the first KB of its body.
    http_status: Mapped[int | None] = mapped_column(SmallInteger)
    response: Mapped[str | None] = mapped_column(Text)
    # HTTP requests this attempt's handler sent to WeCom (app/wecom/calls.py): every retry
    # of the WeCom client within the pass, and a gettoken it had to make; 0 if none.
    wecom_calls: Mapped[int] = mapped_column(Integer, server_default="0")
