"""The migrations are the only way the schema changes: they must round-trip and match the models."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app.config import Settings
from app.database.session import create_engine
from tests.conftest import (
    BACKEND,
    alembic_config,
    create_postgres_database,
    drop_postgres_database,
    make_settings,
    postgres_url,
)

INITIAL_TABLES = {"user", "auth_session", "post", "tag", "post_tag", "post_like"}
EXPECTED_TABLES = INITIAL_TABLES | {
    "image",
    "task",
    "email_token",
    "outbox",
    "follow",
    "comment",
    "media_deletion",
}
# SQLite's full-text index of posts (migration 0007) and the tables FTS5 keeps for it.
FTS_TABLES = {"post_fts", "post_fts_data", "post_fts_idx", "post_fts_docsize", "post_fts_config"}


@pytest.fixture
async def scratch(tmp_path: Path) -> AsyncIterator[Settings]:
    """An empty database of the run's backend, separate from the suite's."""
    if BACKEND == "sqlite":
        yield make_settings(f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}", tmp_path)
        return
    name = await create_postgres_database(f"inkwell_scratch_{uuid.uuid4().hex[:8]}")
    try:
        yield make_settings(postgres_url(name), tmp_path)
    finally:
        await drop_postgres_database(name)


async def _tables(settings: Settings) -> set[str]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
    finally:
        await engine.dispose()
    return set(names) - {"alembic_version"} - FTS_TABLES


async def _all_tables(settings: Settings) -> set[str]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade_round_trip(scratch: Settings) -> None:
    config = alembic_config(scratch)
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await _tables(scratch) == EXPECTED_TABLES

    await asyncio.to_thread(command.downgrade, config, "base")
    assert await _tables(scratch) == set()

    await asyncio.to_thread(command.upgrade, config, "head")
    await asyncio.to_thread(command.downgrade, config, "-1")
    assert "media_deletion" not in await _tables(scratch)
    assert {"follow", "comment"} <= await _tables(scratch)
    await asyncio.to_thread(command.downgrade, config, "-1")
    assert FTS_TABLES.isdisjoint(await _all_tables(scratch))
    assert {"follow", "comment"} <= await _tables(scratch)
    await asyncio.to_thread(command.downgrade, config, "-1")
    assert {"follow", "comment"}.isdisjoint(await _tables(scratch))
    assert "image" not in await _user_columns(scratch)
    assert "outbox" in await _tables(scratch)
    await asyncio.to_thread(command.downgrade, config, "-1")
    assert "outbox" not in await _tables(scratch)
    await asyncio.to_thread(command.downgrade, config, "-1")
    assert "pending_email" not in await _user_columns(scratch)
    await asyncio.to_thread(command.downgrade, config, "0002_images_tasks_email_tokens")
    assert "ix_task_name_state" not in await _task_indexes(scratch)
    await asyncio.to_thread(command.downgrade, config, "0001_initial_schema")
    assert await _tables(scratch) == INITIAL_TABLES
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await _tables(scratch) == EXPECTED_TABLES
    assert "ix_task_name_state" in await _task_indexes(scratch)
    assert "pending_email" in await _user_columns(scratch)
    assert "image" in await _user_columns(scratch)


async def test_existing_posts_get_unique_slugs(scratch: Settings) -> None:
    """0006 derives a slug for every post already there, with a suffix when titles collide."""
    config = alembic_config(scratch)
    await asyncio.to_thread(command.upgrade, config, "0005_outbox")
    engine = create_engine(scratch)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    'INSERT INTO "user" (id, email, username, password_hash, full_name, bio,'
                    " role, is_active, is_verified, created_at, updated_at) VALUES (1,"
                    " 'a@example.com', 'alice', 'x', '', '', 'user', true, true,"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            for title in ("Hello, World!", "hello world", "Ünïcödé title", "!!!"):
                await conn.execute(
                    text(
                        "INSERT INTO post (author_id, title, content, published, likes,"
                        " created_at, updated_at) VALUES (1, :title, 'c', true, 0,"
                        " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    {"title": title},
                )
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.connect() as conn:
            slugs = list(await conn.scalars(text("SELECT slug FROM post ORDER BY id")))
    finally:
        await engine.dispose()
    assert slugs == ["hello-world", "hello-world-2", "unicode-title", "post"]


async def _user_columns(settings: Settings) -> set[str]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            columns = await conn.run_sync(lambda c: inspect(c).get_columns("user"))
    finally:
        await engine.dispose()
    return {str(column["name"]) for column in columns}


async def _task_indexes(settings: Settings) -> set[str]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("task"))
    finally:
        await engine.dispose()
    return {str(index["name"]) for index in indexes}


@pytest.mark.filterwarnings(
    "ignore:autogenerate skipping metadata-specified expression",
    "ignore:Skipped unsupported reflection of expression-based index",
)
async def test_models_and_migrations_do_not_drift(scratch: Settings) -> None:
    config = alembic_config(scratch)
    await asyncio.to_thread(command.upgrade, config, "head")
    # Raises AutogenerateDiffsDetected when the models need a migration nobody wrote.
    await asyncio.to_thread(command.check, config)


def test_migrations_form_one_line_of_history(settings: Settings) -> None:
    script = ScriptDirectory.from_config(alembic_config(settings))
    assert len(script.get_heads()) == 1
