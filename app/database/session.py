"""Engine and session factory, one of each per process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from app.config import Settings

SQLITE_BUSY_TIMEOUT_S = 30


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.sqlalchemy_url
    if settings.is_sqlite:
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            echo=settings.db_echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if settings.db_pgbouncer:
        # PgBouncer in transaction mode hands each transaction whichever server connection is
        # free: statements prepared on one are unknown (or already taken) on the next. So no
        # statement caches, and a unique name for each statement asyncpg still prepares.
        url = url.update_query_dict({"prepared_statement_cache_size": "0"})
        connect_args = {
            "statement_cache_size": 0,
            "prepared_statement_name_func": _unique_statement_name,
        }
    engine = create_async_engine(
        url,
        echo=settings.db_echo,
        connect_args=connect_args,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # No ping per checkout (a round trip per request): a connection the driver already
        # knows is closed is replaced on checkout instead (_replace_closed), one that dies in
        # use raises and invalidates the pool, and old connections are recycled anyway.
        pool_recycle=1800,
    )
    event.listen(engine.sync_engine, "do_connect", _connect_errors_as_dbapi_errors)
    event.listen(engine.sync_engine.pool, "checkout", _replace_closed)
    return engine


def _connect_errors_as_dbapi_errors(
    dialect: Dialect, _record: Any, cargs: list[Any], cparams: dict[str, Any]
) -> Any:
    """asyncpg lets a refused, reset or timed-out connection attempt out as a bare OSError, which
    SQLAlchemy passes on as it is. Raised as the driver's OperationalError instead, SQLAlchemy
    wraps it like any other database error, so that `unavailable()` knows it for what it is."""
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as error:  # TimeoutError included
        raise dialect.loaded_dbapi.OperationalError(
            f"could not connect to the database: {error!r}"
        ) from error


def _replace_closed(_dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    """A pooled connection the driver already saw closed (the server restarted, or ended the
    session) is replaced before use, at no cost: no round trip, unlike `pool_pre_ping`. The
    whole pool goes with it, as its other connections are likely closed too."""
    is_closed = getattr(record.driver_connection, "is_closed", None)  # asyncpg's
    if is_closed is not None and is_closed():
        raise exc.InvalidatePoolError("the pooled connection was closed by the server")


# SQLSTATE classes that say the database cannot serve now rather than that a statement was
# wrong: 08 connection exception, 53 insufficient resources (too many connections, disk full),
# 57P operator intervention (shutting down, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def unavailable(error: BaseException) -> bool:
    """Whether `error` means the database could not be reached or could not serve: a refused
    or lost connection, a server shutting down or starting up, a pool with no connection free.
    Such a request may succeed if sent again shortly."""
    if isinstance(error, exc.TimeoutError):  # no pooled connection free in time
        return True
    if not isinstance(error, exc.DBAPIError):
        return False
    if error.connection_invalidated or isinstance(
        error, (exc.OperationalError, exc.InterfaceError)
    ):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def connection_lost(error: BaseException) -> bool:
    """Whether `error` is a pooled connection found dead in use: SQLAlchemy has invalidated it
    (and the pool), so the next checkout opens a fresh one."""
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside a writer; foreign keys are off in SQLite unless asked for.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def create_read_session_factory(
    engine: AsyncEngine, settings: Settings
) -> async_sessionmaker[AsyncSession]:
    """Sessions in autocommit mode, for reads only: each statement runs on its own, with no
    BEGIN and no ROLLBACK round trip around it. Not behind PgBouncer in transaction mode: a
    statement outside a transaction may be prepared on one server connection and run on
    another."""
    if settings.db_pgbouncer:
        return create_session_factory(engine)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return async_sessionmaker(autocommit, expire_on_commit=False, autoflush=False)


def read_engine(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine the read sessions are bound to (autocommit, unless behind PgBouncer): a read of
    one Core statement takes a connection from it, with no `Session` (and no ORM) around it."""
    bind = sessions.kw["bind"]
    if not isinstance(bind, AsyncEngine):
        raise TypeError("read sessions are bound to an engine")
    return bind


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One session per unit of work: services commit; anything left open is rolled back."""
    async with factory() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
