from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database.base import Base
from app.database.types import BigIntPK, UTCDateTime, utcnow
from app.models.task import Task


class OutboxJob(Base):
    """A job recorded in the same transaction as the data it is about (the transactional
    outbox): it is handed to its runner after the commit, or later by the relay when the broker
    did not answer. Deleting the task (with its user) drops a job not yet sent."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(None, "sent_at", "next_attempt_at"),  # the relay looks for due, unsent jobs
        # The sweep goes from unfinished tasks to their jobs; deleting a task cascades here.
        Index(None, "task_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # The task's id is the job's idempotency key: every copy of the job carries it.
    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("task.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    # Added with its task in one flush: the task's row goes in first.
    task: Mapped[Task] = relationship(lazy="raise")
