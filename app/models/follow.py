from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from app.database.base import Base
from app.database.types import UTCDateTime, utcnow


class Follow(Base):
    """`follower_id` follows `followee_id`. Lists page newest follow first, by
    `(created_at, the other user's id)`, from the two indexes."""

    __tablename__ = "follow"
    __table_args__ = (
        Index(None, "followee_id", "created_at", "follower_id"),
        Index(None, "follower_id", "created_at", "followee_id"),
    )

    follower_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    followee_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
