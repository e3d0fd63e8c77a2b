"""The corp's customer tags (企业标签) and their groups."""

from datetime import datetime

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class TagGroup(Base):
    __tablename__ = "tag_groups"

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    order: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]


class Tag(Base):
    __tablename__ = "tags"

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    group_id: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(Text)
    order: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
