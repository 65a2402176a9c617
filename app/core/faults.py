"""Why a job failed: for a passing reason (a database, broker, mail server or network that did not
answer) or for a reason inherent to its input. Both runners ask `is_transient`: a passing fault
is retried with backoff and never counts against the job's input; any other ends the job."""

from __future__ import annotations

import errno
import smtplib
import socket

import amqp.exceptions
import asyncpg.exceptions
import kombu.exceptions
import redis.exceptions
from sqlalchemy import exc as sa

from app.database.session import unavailable

# Errors of the PostgreSQL client that mean the connection, not the statement, failed.
_ASYNCPG_CONNECTION = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.AdminShutdownError,  # 57P01: a fast shutdown or restart
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up
    asyncpg.exceptions.TooManyConnectionsError,
)
# Local file errors are about the job's own files (an upload removed meanwhile), not a service.
_LOCAL_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_PASSING_ERRNOS = {errno.ENOSPC, errno.EAGAIN, errno.EMFILE, errno.ENFILE}
# Connection errors of the broker and of the Redis stores.
_SERVICE_CONNECTION = (
    kombu.exceptions.OperationalError,
    amqp.exceptions.RecoverableConnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
)


class RetryableError(Exception):
    """A failure worth trying again later (an SMTP server that is down)."""


class JobBusy(RetryableError):
    """Another copy of this job (a redelivery, a second send) holds it: try again when its hold
    ends, without counting an attempt or touching the task."""


class Delivered(RetryableError):
    """An e-mail sent whose success could not be recorded: the next try only records it."""


class Interrupted(RetryableError):
    """An image job stopped by a passing fault (the database went away) after it counted its
    attempt: the next try of the same job reuses that attempt (`reuse_attempt`), so that a
    fault of a service never makes an image fail."""

    def __init__(self, attempt: int) -> None:
        super().__init__(f"interrupted at attempt {attempt}")
        self.attempt = attempt


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, (RetryableError, *_SERVICE_CONNECTION, *_ASYNCPG_CONNECTION)):
        return True
    if isinstance(exc, sa.DBAPIError | sa.TimeoutError):
        # A connection that was lost, or refused, a database that is restarting, a pool out of
        # connections; not a statement the database refused (constraint, syntax, data).
        return unavailable(exc)
    if isinstance(exc, sa.DisconnectionError):
        return True
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        return "closed" in str(exc) or "connection" in str(exc).lower()
    if isinstance(exc, _LOCAL_FILE_ERRORS):
        return False
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if isinstance(exc, OSError):  # sockets, name resolution, a full disk
        return exc.errno is None or exc.errno in _PASSING_ERRNOS or exc.errno in _NETWORK_ERRNOS
    return False


_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.ENOTCONN,
}


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it: drivers' errors are often wrapped) is a passing fault
    of a service the job depends on, so that trying again later may succeed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _transient_itself(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
