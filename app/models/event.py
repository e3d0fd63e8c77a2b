from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class Event(Base):
    """One callback as WeCom delivered it, stored once however often it was delivered.

    raw_body is the encrypted body exactly as received (evidence); payload is its decrypted
    inner message's fields as JSON, for processing and queries. xml, the decrypted message
    itself, is no longer written (ADR 0008: a third copy of the same content on the hot
    path); rows stored before migration 0015 keep theirs. (app_id, dedup_key) is unique:
    that constraint, not application code, is what makes a retried callback a no-op.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="RESTRICT"))
    received_at: Mapped[datetime]
    create_time: Mapped[datetime | None]
    family: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    msg_id: Mapped[str | None] = mapped_column(String(128))
    dedup_key: Mapped[str] = mapped_column(String(160))
    raw_body: Mapped[str] = mapped_column(Text)
    xml: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Processing (app/processing/processor.py): pending → processed | failed. A claim is a
    # lease: locked_by holds it until locked_until, after which any processor may take over.
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(server_default="0")
    next_attempt_at: Mapped[datetime | None]
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    processed_by: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("app_id", "dedup_key"),
        Index("ix_events_pending", "id", postgresql_where=text("status = 'pending'")),
        # The API's `since`/`until`: where in the id order a time falls (app/queries/events.py).
        Index("ix_events_received_at", "received_at"),
        # The API's filters, each in the list's own order (newest first).
        Index("ix_events_app_id_id", "app_id", "id"),
        Index("ix_events_type_id", "type", "id"),
        Index("ix_events_family_id", "family", "id"),
        Index("ix_events_status_id", "status", "id"),
        Index(
            "ix_events_external_userid",
            text("(payload ->> 'ExternalUserID')"),
            "id",
            postgresql_where=text("payload ? 'ExternalUserID'"),
        ),
        Index(
            "ix_events_chat_id",
            text("(payload ->> 'ChatId')"),
            "id",
            postgresql_where=text("payload ? 'ChatId'"),
        ),
    )
