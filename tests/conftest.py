"""Fixtures. INKWELL_TEST_MODE chooses what the whole suite runs against:

- `embedded`: a SQLite file and in-process memory for the cache and rate limits, media on disk;
- `services`: a fresh PostgreSQL database and a redis-server started for the run, media in a
  bucket of moto's S3 server started for the run (INKWELL_TEST_S3=0: on disk instead).

The database is migrated with Alembic; one app serves the run; rows, cache entries and rate-limit
counters are cleared after every test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command
from alembic.config import Config
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import delete, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.database.base import Base
from app.database.session import create_engine
from app.main import create_app
from app.stores import Stores
from tests.redis_server import RedisServer
from tests.s3_server import S3Server
from tests.services import CeleryWorker, SmtpServer

ROOT = Path(__file__).resolve().parent.parent
MODE = os.environ.get("INKWELL_TEST_MODE", "embedded")
if MODE not in ("embedded", "services"):
    raise pytest.UsageError(f"INKWELL_TEST_MODE must be embedded or services, not {MODE!r}")
SERVICES = MODE == "services"
BACKEND = "postgresql" if SERVICES else "sqlite"
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Media in a bucket (moto's S3 server) for the whole services run, unless turned off.
S3_MEDIA = SERVICES and os.environ.get("INKWELL_TEST_S3", "1") != "0"
TEST_BUCKET = "inkwell-test-media"
# Short, so a test that kills the worker sees its task delivered again within seconds.
WORKER_VISIBILITY_TIMEOUT_S = 8


def pytest_report_header() -> str:
    stores = "redis" if SERVICES else "memory"
    media = "an S3 bucket (moto)" if S3_MEDIA else "local files"
    return (
        f"inkwell test mode: {MODE} (database {BACKEND}, cache and limits in {stores}, "
        f"media in {media})"
    )


def alembic_config(settings: Settings) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    return config


def postgres_url(database: str) -> str:
    url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+asyncpg", database=database)
    return url.render_as_string(hide_password=False)


async def create_postgres_database(name: str) -> str:
    try:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {exc}"
        if ON_CI:
            pytest.fail(message + " (CI=true: the PostgreSQL run may not be skipped)")
        pytest.skip(message)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_postgres_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def tmp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
async def database_url(tmp_data: Path) -> AsyncIterator[str]:
    """A fresh database for this run, dropped at the end."""
    if BACKEND == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_data / 'test.db'}"
        return
    name = await create_postgres_database(f"inkwell_test_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    try:
        yield postgres_url(name)
    finally:
        await drop_postgres_database(name)


# What another app of the run copies from the run's settings, so that it is one more API process
# of the same deployment: its jobs reach the same worker, its e-mail the same SMTP server.
SHARED_FIELDS = (
    "redis_url",
    "celery_broker_url",
    "celery_visibility_timeout_seconds",
    "celery_queue",
    "smtp_host",
    "smtp_port",
    "smtp_from",
    "public_url",
    "s3_bucket",
    "s3_endpoint_url",
    "s3_region",
    "s3_access_key_id",
    "s3_secret_access_key",
)


def settings_like(settings: Settings, **overrides: Any) -> Settings:
    """The run's settings (database, data directory, Redis, broker, SMTP), with `overrides`."""
    values = {name: getattr(settings, name) for name in SHARED_FIELDS}
    data_dir = overrides.pop("data_dir", settings.data_dir)
    return make_settings(str(settings.database_url), data_dir, **(values | overrides))


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": database_url,
        "data_dir": data_dir,
        "jwt_secret_key": "test-secret-test-secret-test-secret-0123456789",
        # Cheap hashes keep the suite fast; test_security checks the production defaults.
        "argon2_memory_kib": 1024,
        "argon2_time_cost": 1,
        **overrides,
    }
    return Settings.model_validate(values)


def _own_redis_server() -> Iterator[RedisServer | None]:
    if not SERVICES:
        yield None
        return
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    """The run's own redis-server in services mode; None in embedded mode."""
    yield from _own_redis_server()


@pytest.fixture(scope="session")
def broker_server() -> Iterator[RedisServer | None]:
    """The Celery broker in services mode: a redis-server of its own, so that the tests that
    kill the cache's Redis do not take the worker's broker down with it."""
    yield from _own_redis_server()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the run, with the run's bucket; started when a test asks for it,
    and for the whole run in services mode (media in the bucket)."""
    server = S3Server()
    server.start()
    server.create_bucket(TEST_BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    """The SMTP server every e-mail of the run goes to, in either mode."""
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def settings(
    database_url: str,
    tmp_data: Path,
    redis_server: RedisServer | None,
    broker_server: RedisServer | None,
    smtp_server: SmtpServer,
    request: pytest.FixtureRequest,
) -> Settings:
    services: dict[str, object] = {"smtp_host": "127.0.0.1", "smtp_port": smtp_server.port}
    if S3_MEDIA:
        s3: S3Server = request.getfixturevalue("s3_server")
        services |= s3.settings(TEST_BUCKET)
    if redis_server is not None and broker_server is not None:
        services |= {
            "redis_url": redis_server.url,
            "celery_broker_url": broker_server.url,
            "celery_visibility_timeout_seconds": WORKER_VISIBILITY_TIMEOUT_S,
        }
    settings = make_settings(database_url, tmp_data, **services)
    await asyncio.to_thread(command.upgrade, alembic_config(settings), "head")
    return settings


SECRET_FIELDS = (
    "jwt_secret_key",
    "media_signing_key",
    "db_pass",
    "smtp_password",
    "first_admin_password",
    "s3_secret_access_key",
)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, for the processes tests start."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if name in SECRET_FIELDS:
            secret = getattr(settings, name)
            value = secret.get_secret_value() if secret else None
        if value is None:
            continue
        env[name.upper()] = ",".join(value) if isinstance(value, list) else str(value)
    return env


@pytest.fixture(scope="session")
def celery_worker(settings: Settings, tmp_data: Path) -> Iterator[CeleryWorker | None]:
    """A real Celery worker process in services mode (None in embedded mode)."""
    if not settings.celery_broker_url:
        yield None
        return
    worker = CeleryWorker(settings_env(settings), tmp_data / "worker.log")
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="session")
async def app(settings: Settings, celery_worker: CeleryWorker | None) -> AsyncIterator[FastAPI]:
    application = create_app(settings, configure_logs=False)
    async with LifespanManager(application):
        yield application


@asynccontextmanager
async def running_app(
    settings: Settings,
    ip: str = "127.0.0.1",
    *,
    raise_app_exceptions: bool = True,
    shutdown_timeout: float = 5,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Another API process: an app of its own made from `settings`, started, and a client
    calling it from `ip`. Stopping it drains its in-process jobs (`shutdown_timeout`)."""
    application = create_app(settings, configure_logs=False)
    transport = httpx.ASGITransport(
        app=application, client=(ip, 123), raise_app_exceptions=raise_app_exceptions
    )
    async with (
        LifespanManager(application, shutdown_timeout=shutdown_timeout),
        httpx.AsyncClient(transport=transport, base_url="http://other") as client,
    ):
        yield application, client


@pytest.fixture(scope="session")
def engine(app: FastAPI) -> AsyncEngine:
    engine: AsyncEngine = app.state.engine
    return engine


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
        yield ac


@pytest.fixture
async def db(app: FastAPI) -> AsyncIterator[AsyncSession]:
    """A session of its own, to look at what the API stored."""
    async with app.state.session_factory() as session:
        yield session


@pytest.fixture(autouse=True)
async def _clean_state(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    uses_app = "app" in request.fixturenames
    app: FastAPI | None = request.getfixturevalue("app") if uses_app else None
    server: RedisServer | None = request.getfixturevalue("redis_server") if uses_app else None
    worker: CeleryWorker | None = request.getfixturevalue("celery_worker") if uses_app else None
    s3: S3Server | None = request.getfixturevalue("s3_server") if uses_app and S3_MEDIA else None
    yield
    if app is None:
        return
    if worker is not None and (worker.process is None or worker.process.poll() is not None):
        worker.start()  # a test stopped it, or it died
    await app.state.backends.runner.drain()  # background jobs of this test finish first
    if s3 is not None:
        s3.restore()  # a test cut the bucket off
    if server is not None:
        if server.process is None:  # a test stopped it
            server.start()
        server.flush()
    stores: Stores = app.state.stores
    await stores.cache.clear()
    await stores.limiter.reset()
    await empty_tables(app.state.engine)


async def empty_tables(engine: AsyncEngine) -> None:
    """Every table emptied (and PostgreSQL's sequences restarted). The outbox relays of the
    running apps read tables meanwhile, and TRUNCATE takes its locks table by table, so
    PostgreSQL may pick the TRUNCATE as a deadlock's victim: then it runs again."""
    for attempt in range(3):
        try:
            await _empty_tables(engine)
            return
        except DBAPIError as exc:
            if attempt == 2 or "deadlock" not in str(exc).lower():
                raise


async def _empty_tables(engine: AsyncEngine) -> None:
    tables = list(reversed(Base.metadata.sorted_tables))
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Fail loudly rather than wait for ever on a transaction someone left open.
            await conn.execute(text("SET LOCAL lock_timeout = '20s'"))
            names = ", ".join(f'"{t.name}"' for t in tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                await conn.execute(delete(table))


@asynccontextmanager
async def tidied_up_after(settings: Settings, redis: RedisServer | None) -> AsyncIterator[None]:
    """For a module whose tests share data through a server of their own (and so skip the
    per-test clean-up): the tables and Redis emptied once its tests are done."""
    yield
    if redis is not None:
        redis.flush()
    engine = create_engine(settings)
    try:
        await empty_tables(engine)
    finally:
        await engine.dispose()


class QueryCounter:
    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def count_queries(engine: AsyncEngine) -> Iterator[QueryCounter]:
    """Counts the SQL statements the app sends while the test runs."""
    counter = QueryCounter()

    def _record(*args: object) -> None:
        counter.statements.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", _record)
    try:
        yield counter
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", _record)
