"""Subscriptions of internal systems to wecom-hub's events (signed outbound webhooks).
Deliveries are actions of kind `webhook` (target = the endpoint's id), their attempts in
action_attempts."""

from datetime import datetime

from sqlalchemy import ARRAY, BigInteger, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class WebhookEndpoint(Base):
    """secret_sealed: the signing secret (`whsec_…`), sealed like app secrets. After a
    rotation the previous one keeps signing too until previous_secret_until (24 h), so a
    receiver can switch without losing a message. event_types empty: every type.

    failing_since: the first failed delivery since the last success; a subscription whose
    deliveries all fail for 5 days is disabled (disabled_reason says why)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, server_default="")
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    enabled: Mapped[bool] = mapped_column(server_default="true")
    secret_sealed: Mapped[str] = mapped_column(Text)
    previous_secret_sealed: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None]
    failing_since: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
