from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database.base import Base
from app.database.types import BigIntPK, UTCDateTime, utcnow
from app.models.user import User


class Comment(Base):
    """A comment on a post, or a reply (`parent_id`) to one of the same post. A deleted comment
    that has replies stays as a tombstone (`deleted`, no body) so the thread survives."""

    __tablename__ = "comment"
    __table_args__ = (
        Index(None, "post_id", "created_at", "id"),
        Index(None, "parent_id"),
        Index(None, "author_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    post_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("post.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("comment.id", ondelete="CASCADE"), default=None
    )
    # Null once the author's account is deleted (only tombstones are left of theirs by then).
    author_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("user.id", ondelete="SET NULL")
    )
    body: Mapped[str | None] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    author: Mapped[User | None] = relationship(lazy="raise")
