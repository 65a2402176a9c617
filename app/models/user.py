from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.database.base import Base
from app.database.types import BigIntPK, UTCDateTime, utcnow


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class User(Base):
    __tablename__ = "user"
    # Never hand a deleted user's id to a new account (SQLite reuses the highest id otherwise).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # Stored lower-cased, so the unique index is case-insensitive on every database.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    # A new address asked for, in effect (and sent resets) only once its link is used. Not
    # unique: two accounts may wait for the same address; the first to verify gets it.
    pending_email: Mapped[str | None] = mapped_column(String(254), default=None)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str] = mapped_column(String(100), default="")
    bio: Mapped[str] = mapped_column(Text, default="")
    # A picture's https URL, given by the user and never fetched by the server.
    image: Mapped[str | None] = mapped_column(String(2048), default=None)
    role: Mapped[str] = mapped_column(String(16), default=Role.USER)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN
