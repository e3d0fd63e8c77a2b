"""Broadcasts (群发): what was asked, whom it went to, and WeCom's tasks per member.

The audience is resolved once, when the broadcast is created, and kept row by row
(`broadcast_recipients`): WeCom only reports on the customers a task names, so the funnel
can always be explained against the list that was meant, even after tags or follows change.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class Broadcast(Base):
    """status: sending (tasks being created) → waiting (members to confirm, results to read)
    → completed; or cancelled (completed_at set once the last results are read).
    horizon_at: results are read until then at the latest."""

    __tablename__ = "broadcasts"
    __table_args__ = (Index("ix_broadcasts_app_id_id", "app_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="RESTRICT"))
    corp_id: Mapped[str] = mapped_column(String(64))
    chat_type: Mapped[str] = mapped_column(String(8))  # single (customers) | group
    audience: Mapped[dict[str, Any]] = mapped_column(JSONB)  # the spec, as given
    content: Mapped[dict[str, Any]] = mapped_column(JSONB)  # text and attachments
    status: Mapped[str] = mapped_column(String(16), server_default="sending")
    audience_size: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    horizon_at: Mapped[datetime]
    cancelled_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    polled_at: Mapped[datetime | None]
    # The last thing that went wrong reading results (retried at the next poll).
    poll_error: Mapped[str | None] = mapped_column(Text)


class BroadcastTask(Base):
    """One add_msg_template call: a member and up to WeCom's per-call limit of their
    recipients (`chunk` numbers a member's calls). status: pending (not made yet), created
    (msgid known, the member has not sent), sent (the member confirmed), failed (WeCom
    refused: errcode), skipped (nothing made: the broadcast was cancelled first), cancelled.

    adopted: the msgid was found with get_groupmsg_list_v2 after an answer was lost, not
    read from add_msg_template's answer."""

    __tablename__ = "broadcast_tasks"
    __table_args__ = (UniqueConstraint("broadcast_id", "userid", "chunk"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"))
    userid: Mapped[str] = mapped_column(String(128))
    chunk: Mapped[int] = mapped_column(Integer, server_default="0")
    recipients: Mapped[int] = mapped_column(Integer)
    action_id: Mapped[int | None] = mapped_column(
        ForeignKey("actions.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    msgid: Mapped[str | None] = mapped_column(String(128), unique=True)
    adopted: Mapped[bool] = mapped_column(server_default="false")
    fail_list: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    errcode: Mapped[int | None]
    errmsg: Mapped[str | None] = mapped_column(Text)
    first_attempt_at: Mapped[datetime | None]  # before the first add_msg_template went out
    created_at: Mapped[datetime | None]  # at WeCom
    confirmed_at: Mapped[datetime | None]  # the member sent it (WeCom's send_time)
    results_at: Mapped[datetime | None]  # results last read after it was confirmed
    reminders: Mapped[list[datetime]] = mapped_column(
        ARRAY(DateTime(timezone=True)), server_default="{}"
    )


class BroadcastRecipient(Base):
    """A customer (external_userid) or customer group (chat_id) of a broadcast, the member
    whose task it is in, and what became of it: pending (WeCom's 0), sent (1), not_friend
    (2), over_limit (3: it had already received its share of mass messages), unsendable
    (in the task's fail_list), failed (the task was refused: errcode)."""

    __tablename__ = "broadcast_recipients"
    # A task's recipients (its add_msg_template call, its fail_list, its refusal): without
    # it each of a big broadcast's tasks would read every recipient of the broadcast.
    __table_args__ = (Index("ix_broadcast_recipients_task", "broadcast_id", "userid", "chunk"),)

    broadcast_id: Mapped[int] = mapped_column(
        ForeignKey("broadcasts.id", ondelete="CASCADE"), primary_key=True
    )
    recipient: Mapped[str] = mapped_column(String(128), primary_key=True)
    userid: Mapped[str] = mapped_column(String(128))
    chunk: Mapped[int] = mapped_column(Integer, server_default="0")
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    errcode: Mapped[int | None]
    send_time: Mapped[datetime | None]
    # WeCom's own number for the status, as last read (0-3), for whoever checks our mapping.
    wecom_status: Mapped[int | None] = mapped_column(SmallInteger)
