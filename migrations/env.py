"""Alembic environment: the URL comes from Inkwell's settings; migrations use the async engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

import app.models  # noqa: F401 - registers every table on the metadata
from app.config import Settings
from app.database.base import Base
from app.database.session import create_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _settings() -> Settings:
    settings = config.attributes.get("settings")
    return settings if isinstance(settings, Settings) else Settings()


# SQLite's full-text index of posts (an FTS5 virtual table and the tables it keeps) is made by
# migration 0007 and has no model; PostgreSQL searches a column of `post` instead.
FTS_TABLE_PREFIX = "post_fts"
POSTGRES_ONLY = {("column", "search_vector"), ("index", "ix_post_search_vector")}


def _include(connection: Connection) -> Callable[..., bool]:
    sqlite = connection.dialect.name == "sqlite"

    def include(
        obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
    ) -> bool:
        if type_ == "table" and name and name.startswith(FTS_TABLE_PREFIX):
            return False
        return not (sqlite and (type_, name) in POSTGRES_ONLY)

    return include


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=_include(connection),
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(_settings())
    async with engine.connect() as connection:
        await connection.run_sync(_configure)
    await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_settings().sqlalchemy_url.render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(_run_async())
