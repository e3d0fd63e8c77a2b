"""Channels: the 「联系我」 (contact way) and 加入群聊 (join way) codes wecom-hub made or
imported, each with the `state` that brings its customers back to it (app/channels/).

WeCom does not show API-made ways in its admin console, so the config_id kept here is the
only handle on them: a row is written (`pending`, with its generated state) before WeCom is
asked, and gets its config_id after (docs/adr/0009-channels.md).
"""

from datetime import datetime

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.action import Action
from app.models.base import Base
from app.models.group_chat import GroupMember


class Channel(Base):
    """kind: contact_way | join_way. status: pending (reserved, WeCom's answer not yet
    stored) → active. source: api (made by wecom-hub) | imported (by `sync`).

    state is unique per corp where set: it is what attributes a customer to one channel.
    An imported way without a state, or with one another channel holds, has none here."""

    __tablename__ = "channels"
    __table_args__ = (
        UniqueConstraint("corp_id", "kind", "config_id"),
        Index(
            "uq_channels_corp_id_state",
            "corp_id",
            "state",
            unique=True,
            postgresql_where=text("state IS NOT NULL"),
        ),
        # The lists' filters, each in the list's own order (newest first).
        Index("ix_channels_app_id_id", "app_id", "id"),
        Index("ix_channels_kind_id", "kind", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    corp_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(Text)
    state: Mapped[str | None] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    source: Mapped[str] = mapped_column(String(16), server_default="api")
    config_id: Mapped[str | None] = mapped_column(String(128))
    qr_code: Mapped[str | None] = mapped_column(Text)
    userids: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    party_ids: Mapped[list[int]] = mapped_column(ARRAY(Integer), server_default="{}")
    chat_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    skip_verify: Mapped[bool] = mapped_column(server_default="true")
    remark: Mapped[str] = mapped_column(Text, server_default="")
    # The welcome rule the channel made (owned: deleted with it) or was linked to (its state
    # is in that rule's match.states, and taken out again when the channel goes).
    welcome_rule_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("rules.id", ondelete="SET NULL")
    )
    welcome_rule_owned: Mapped[bool] = mapped_column(server_default="false")
    tag_rule_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("rules.id", ondelete="SET NULL")
    )
    # SHA-256 of (API key, Idempotency-Key, body) of the request that made it: a retry of a
    # create interrupted after its reservation finds the channel and finishes it.
    request_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    # The code's image, fetched once from qr_code (GET /api/v1/channels/{id}/qr.png).
    qr_png: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    qr_fetched_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


# A channel's welcome numbers read the welcome actions of its state (app/queries/channels.py):
# by corp and state, in creation order, without reading the table.
ix_actions_welcome_state = Index(
    "ix_actions_welcome_state",
    Action.corp_id,
    text("(payload ->> 'state')"),
    Action.created_at,
    postgresql_include=["status"],
    postgresql_where=text("kind = 'welcome'"),
)

# A join way's numbers read the group members who joined with its state: by corp and state.
ix_group_members_state = Index(
    "ix_group_members_state",
    GroupMember.corp_id,
    GroupMember.state,
    postgresql_where=text("state IS NOT NULL"),
)
