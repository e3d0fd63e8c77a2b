"""Customers (external contacts) and their relations to members (follows)."""

from datetime import datetime

from sqlalchemy import ARRAY, BigInteger, Identity, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class ExternalContact(Base):
    __tablename__ = "external_contacts"

    # Not the key (corp_id, external_userid is): the order customers arrived in, for the
    # API's keyset pages, newest first.
    id: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    external_userid: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    type: Mapped[int | None]  # 1 WeChat user, 2 WeCom user
    avatar: Mapped[str | None] = mapped_column(Text)
    gender: Mapped[int | None]
    corp_name: Mapped[str | None] = mapped_column(Text)
    corp_full_name: Mapped[str | None] = mapped_column(Text)
    position: Mapped[str | None] = mapped_column(Text)
    unionid: Mapped[str | None] = mapped_column(String(128))
    first_seen_at: Mapped[datetime | None]
    enriched_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class Follow(Base):
    """member ↔ customer. status: active, half (added, member not yet confirmed),
    deleted_by_customer (churn: del_follow_user), deleted_by_member (del_external_contact).

    changed_at is the WeCom CreateTime of the last event applied: an older event arriving
    late changes nothing it should not (out-of-order delivery)."""

    __tablename__ = "follows"
    __table_args__ = (
        # The API's customer filters: by customer, channel state, tag.
        Index("ix_follows_customer", "corp_id", "external_userid"),
        Index("ix_follows_state", "state"),
        Index("ix_follows_tag_ids", "tag_ids", postgresql_using="gin"),
    )

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    userid: Mapped[str] = mapped_column(String(128), primary_key=True)
    external_userid: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(24))
    added_at: Mapped[datetime | None]
    add_way: Mapped[int | None]
    state: Mapped[str | None] = mapped_column(String(64))
    remark: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    oper_userid: Mapped[str | None] = mapped_column(String(128))
    tag_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    deleted_by_customer_at: Mapped[datetime | None]
    deleted_by_member_at: Mapped[datetime | None]
    delete_source: Mapped[str | None] = mapped_column(String(64))
    changed_at: Mapped[datetime | None]
    enriched_at: Mapped[datetime | None]
    # When a mark_tag action last changed tag_ids here: an enrichment whose answer WeCom
    # gave before that keeps these tags instead of its older list (migration 0015).
    tags_marked_at: Mapped[datetime | None]
