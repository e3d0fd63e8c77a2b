"""The corp's own members (企业成员) and departments, as change_contact reports them."""

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class Member(Base):
    __tablename__ = "members"

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    userid: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    department: Mapped[str | None] = mapped_column(Text)
    position: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None]
    changed_at: Mapped[datetime | None]


class Department(Base):
    __tablename__ = "departments"

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[str | None] = mapped_column(String(32))
    deleted_at: Mapped[datetime | None]
    changed_at: Mapped[datetime | None]
