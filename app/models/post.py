from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Computed,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database.base import Base
from app.database.types import BigIntPK, UTCDateTime, utcnow
from app.models.image import Image
from app.models.user import User

SLUG_MAX_LENGTH = 100
# The text search configuration: 'simple' (lower-cased whole words, no stemming, no stop words)
# finds what SQLite's FTS5 finds, in any language, and a search for "the" is not silently empty.
SEARCH_CONFIG = "simple"
SEARCH_VECTOR_SQL = (
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(title, '')), 'A') || "
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(summary, '')), 'B') || "
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(content, '')), 'C')"
)

post_tag = Table(
    "post_tag",
    Base.metadata,
    Column("post_id", BigInteger, ForeignKey("post.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", BigInteger, ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True),
    Index(None, "tag_id", "post_id"),
)


class Tag(Base):
    __tablename__ = "tag"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    # Published posts carrying the tag, kept exact by triggers on post_tag and post (migration
    # 0007), so that the popular tags are read without counting posts.
    post_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Post(Base):
    __tablename__ = "post"
    __table_args__ = (
        Index(None, "created_at", "id"),
        Index(None, "updated_at", "id"),
        Index(None, "likes", "id"),
        Index(None, "author_id", "created_at"),
        Index(None, "slug", unique=True),
        {"sqlite_autoincrement": True},
    )
    # Computed columns are expired after a write, not read back: `search_vector` is not a
    # column on SQLite.
    __mapper_args__ = {"eager_defaults": False}

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    author_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("user.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    # Derived from the title when the post is created (a suffix when taken), then kept.
    slug: Mapped[str] = mapped_column(String(SLUG_MAX_LENGTH))
    summary: Mapped[str | None] = mapped_column(String(300), default=None)
    content: Mapped[str] = mapped_column(Text)
    published: Mapped[bool] = mapped_column(Boolean, default=True)
    # Kept in step with post_like by the like service, so sorting by likes needs no join.
    likes: Mapped[int] = mapped_column(Integer, default=0)
    # Comments not deleted, kept in step by the comment service like `likes`.
    comments_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # PostgreSQL only (SQLite searches the FTS5 table `post_fts`, kept by triggers): the words
    # of the title (weight A), summary (B) and content (C), computed by the database. Never
    # loaded with the post.
    search_vector: Mapped[str | None] = mapped_column(
        TSVECTOR, Computed(SEARCH_VECTOR_SQL, persisted=True), deferred=True
    )

    author: Mapped[User] = relationship(lazy="raise")
    tags: Mapped[list[Tag]] = relationship(secondary=post_tag, lazy="raise", order_by=Tag.name)
    images: Mapped[list[Image]] = relationship(
        lazy="raise", order_by=Image.id, cascade="all, delete-orphan", passive_deletes=True
    )


class PostLike(Base):
    __tablename__ = "post_like"
    __table_args__ = (Index(None, "user_id"),)

    post_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("post.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# Case-insensitive title sort; declared after the class so it can name the column.
Index("ix_post_title_lower", func.lower(Post.title), Post.id)
# PostgreSQL only, as the column it indexes.
Index("ix_post_search_vector", Post.search_vector, postgresql_using="gin")
