"""Automation rules that marketing decides: welcome messages, auto-tags, quick replies.
match and content are validated JSON (app/automations/rules.py) per kind."""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class Rule(Base):
    __tablename__ = "rules"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # welcome, tag, reply
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(server_default="0")
    enabled: Mapped[bool] = mapped_column(server_default="true")
    match: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    content: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
