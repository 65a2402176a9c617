from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.core.mail import Mailer, build_mailer
from app.core.media import MediaStorage
from app.core.storage import build_media
from app.database.session import create_engine, create_session_factory
from app.stores import Stores


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a background job needs: the same pieces the API has, built once per process."""

    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    stores: Stores
    media: MediaStorage
    mailer: Mailer
    engine: AsyncEngine | None = None  # set when the context owns it (a worker process)

    @classmethod
    def for_worker(cls, settings: Settings) -> JobContext:
        engine = create_engine(settings)
        return cls(
            settings,
            create_session_factory(engine),
            Stores.from_settings(settings),
            build_media(settings),
            build_mailer(settings),
            engine,
        )

    async def close(self) -> None:
        await self.stores.close()
        await self.media.close()
        if self.engine is not None:
            await self.engine.dispose()
