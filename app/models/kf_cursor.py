"""Where reading each 微信客服 account's messages stands (kf/sync_msg's cursor), shared by all
replicas: a message is read once, none is skipped, across restarts."""

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
