"""What the WeCom API client keeps: shared access tokens, and a record of every call."""

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class AccessToken(Base):
    """One token per (corp, secret), shared by every replica. token is sealed like the
    secrets it stands for; secret_hash is a SHA-256, so the secret itself is not here."""

    __tablename__ = "access_tokens"

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_sealed: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime]
    fetched_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ApiCall(Base):
    __tablename__ = "api_calls"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    corp_id: Mapped[str] = mapped_column(String(64))
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id", ondelete="RESTRICT"))
    api: Mapped[str] = mapped_column(String(128))
    http_status: Mapped[int | None]
    errcode: Mapped[int | None]
    errmsg: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float)
    called_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_api_calls_called_at", "called_at"),)
