from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class WecomApp(Base):
    """A WeCom app a callback URL belongs to: /callback/{slug}.

    token, EncodingAESKey and secret are stored sealed (app.crypto.at_rest), never in clear.
    Removing an app sets removed_at: its events stay, and its slug can be used again.
    """

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64))
    corp_id: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[int | None] = mapped_column(BigInteger)
    label: Mapped[str] = mapped_column(Text, default="", server_default="")
    token_sealed: Mapped[str] = mapped_column(Text)
    aes_key_sealed: Mapped[str] = mapped_column(Text)
    secret_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    removed_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "uq_apps_slug_active", "slug", unique=True, postgresql_where=text("removed_at IS NULL")
        ),
    )
