from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database.base import Base
from app.database.types import BigIntPK, UTCDateTime, utcnow


class MediaDeletion(Base):
    """The files of an image (a storage key) whose deletion failed, the media storage being
    unreachable: tried again until it succeeds, never forgotten. The image's row is gone."""

    __tablename__ = "media_deletion"
    __table_args__ = (
        Index(None, "next_attempt_at"),  # the retry loop looks for the due ones
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(32), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
