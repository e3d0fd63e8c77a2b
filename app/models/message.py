"""Messages received: from members to an app, and from WeChat customers to 微信客服."""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    corp_id: Mapped[str] = mapped_column(String(64))
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="RESTRICT"))
    # Old events are deleted (retention, app/housekeeping.py); their messages stay.
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(8))  # "app" or "kf"
    msg_id: Mapped[str] = mapped_column(String(128))
    sender: Mapped[str] = mapped_column(String(128))  # member userid or customer external_userid
    open_kfid: Mapped[str | None] = mapped_column(String(128))
    msg_type: Mapped[str] = mapped_column(String(32))
    content: Mapped[str | None] = mapped_column(Text)  # the text, for keyword rules
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("corp_id", "source", "msg_id"),
        Index("ix_messages_sender_id", "sender", "id"),
        Index("ix_messages_event_id", "event_id"),  # SET NULL finds a deleted event's by it
    )
