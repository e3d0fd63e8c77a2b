"""Welcome attachments configured as files (PROTOCOL.md §5.2): the file itself, kept in
Postgres so that every replica can upload it, and its upload to each corp as WeCom
temporary media, whose media_id lives 3 days and is refreshed well before that."""

from datetime import datetime

from sqlalchemy import LargeBinary, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class MediaFile(Base):
    __tablename__ = "media_files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # image, video, file: media/upload's type
    filename: Mapped[str] = mapped_column(Text)  # what the customer sees for a file
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class MediaUpload(Base):
    __tablename__ = "media_uploads"

    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_id: Mapped[str] = mapped_column(Text)
    uploaded_at: Mapped[datetime]
    expires_at: Mapped[datetime]
