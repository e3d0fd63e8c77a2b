"""Customer groups (客户群) and their members."""

from datetime import datetime

from sqlalchemy import BigInteger, Identity, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class CustomerGroup(Base):
    __tablename__ = "customer_groups"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)  # for keyset pages

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(128))
    notice: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None]
    dismissed_at: Mapped[datetime | None]
    member_version: Mapped[str | None] = mapped_column(String(64))
    changed_at: Mapped[datetime | None]
    enriched_at: Mapped[datetime | None]


class GroupMember(Base):
    """member_type 1 is a corp member, 2 a customer. join_scene keeps WeCom's value as
    received: callbacks say 0 (invited) / 3 (QR code), groupchat/get says 1/2/3."""

    __tablename__ = "group_members"
    # A customer's groups (the API's customer detail), not only a group's members.
    __table_args__ = (Index("ix_group_members_member", "corp_id", "member_id"),)

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    member_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    member_type: Mapped[int | None]
    unionid: Mapped[str | None] = mapped_column(String(128))
    joined_at: Mapped[datetime | None]
    join_scene: Mapped[int | None]
    invitor: Mapped[str | None] = mapped_column(String(128))
    group_nickname: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str | None] = mapped_column(String(64))
    quit_at: Mapped[datetime | None]
    quit_scene: Mapped[int | None]
    changed_at: Mapped[datetime | None]
