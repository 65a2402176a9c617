from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database.base import Base
from app.database.types import UTCDateTime, utcnow


class TaskState(enum.StrEnum):
    """Celery's names, so clients of either mode read the same states."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class Task(Base):
    """A background job someone queued: who, what, and how it went. Kept in the database so both
    modes answer `GET /api/tasks/{id}` the same way, and only to the user who queued it."""

    __tablename__ = "task"
    __table_args__ = (
        Index(None, "user_id", "created_at"),
        Index(None, "name", "state"),  # /metrics counts by both
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("user.id", ondelete="CASCADE"), default=None
    )
    state: Mapped[str] = mapped_column(String(16), default=TaskState.PENDING)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
