"""微信客服 state shared by all replicas: where reading each account's messages stands
(kf/sync_msg's cursor: a message is read once, none is skipped, across restarts), and each
customer's send window (PROTOCOL.md §5.7: within 48 h of their last message, at most 5
messages per customer message)."""

from datetime import datetime

from sqlalchemy import String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class KfCursor(Base):
    __tablename__ = "kf_cursors"

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    open_kfid: Mapped[str] = mapped_column(String(128), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text, server_default="")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class KfWindow(Base):
    """Reset by each message the customer writes; counts the replies sent since."""

    __tablename__ = "kf_windows"

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    open_kfid: Mapped[str] = mapped_column(String(128), primary_key=True)
    external_userid: Mapped[str] = mapped_column(String(256), primary_key=True)
    last_message_at: Mapped[datetime]
    replies: Mapped[int] = mapped_column(server_default="0")
