from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.core.cursors import Cursors
from app.core.media import MediaStorage
from app.core.queue import JobOutbox, TaskRunner
from app.services.security import Security
from app.stores import Stores


@dataclass(frozen=True, slots=True)
class Backends:
    """What services may need beside the request's database session, built once at start-up:
    the stores (cache, sessions, limits), media storage, the task runner and the outbox that
    feeds it, the password and token primitives, the cursor signer, and autocommit sessions
    for reads that may not touch the database at all."""

    settings: Settings
    stores: Stores
    media: MediaStorage
    runner: TaskRunner
    security: Security
    read_sessions: async_sessionmaker[AsyncSession]
    outbox: JobOutbox
    cursors: Cursors
