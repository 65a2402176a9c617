"""Domain errors as types, and the handlers that render every error as problem+json (RFC 9457)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.database.session import connection_lost, unavailable

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    """Base of every error a service raises. Subclasses set `status`, `code` and `title`."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    detail: ClassVar[str] = ""

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = detail or self.detail or self.title
        self.headers = headers or {}
        super().__init__(self.message)


# --- authentication ---------------------------------------------------------------------------
class Unauthorized(AppError):
    status = 401
    code = "not_authenticated"
    title = "Not authenticated"
    detail = "Send a valid access token: `Authorization: Bearer <token>`."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    title = "Invalid credentials"
    detail = "The username or password is incorrect."


class InvalidToken(Unauthorized):
    code = "token_invalid"
    title = "Invalid token"
    detail = "The token is malformed, badly signed or not meant for this use."


class TokenExpired(Unauthorized):
    code = "token_expired"
    title = "Token expired"
    detail = "The token has expired."


class TokenRevoked(Unauthorized):
    code = "token_revoked"
    title = "Token revoked"
    detail = "The session this token belongs to has ended."


class RefreshTokenReused(Unauthorized):
    code = "token_reused"
    title = "Refresh token reused"
    detail = "This refresh token was already used; the session has been ended for safety."


class InactiveUser(Unauthorized):
    code = "user_inactive"
    title = "Account inactive"
    detail = "This account is deactivated."


class RevocationPending(AppError):
    """503: the database has ended the session(s), but Redis, where every API process looks
    first, could not be told within REDIS_REVOCATION_WAIT_SECONDS. Not acknowledged: until
    this process reaches Redis again (or AUTH_CACHE_TTL_SECONDS pass) another one may still
    accept the session. Logging out or ending the session again tells Redis once it answers."""

    status = 503
    code = "revocation_pending"
    title = "Revocation not confirmed"

    def __init__(self, retry_after: int, cached_for: int) -> None:
        super().__init__(
            "Saved, but not every server could be told yet that the session has ended, so its "
            f"tokens may still work for up to {cached_for} seconds. Log out or end the session "
            "again to confirm.",
            headers={"Retry-After": str(retry_after)},
        )


# --- permissions ------------------------------------------------------------------------------
class Forbidden(AppError):
    status = 403
    code = "forbidden"
    title = "Forbidden"
    detail = "You are not allowed to do this."


class AdminRequired(Forbidden):
    code = "admin_required"
    detail = "Only administrators may do this."


class NotPostAuthor(Forbidden):
    code = "not_post_author"
    detail = "Only the post's author or an administrator may change it."


# --- missing ----------------------------------------------------------------------------------
class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class PostNotFound(NotFound):
    code = "post_not_found"
    detail = "No such post."


class UserNotFound(NotFound):
    code = "user_not_found"
    detail = "No such user."


class SessionNotFound(NotFound):
    code = "session_not_found"
    detail = "No such session."


# --- conflicts and rule violations ------------------------------------------------------------
class Conflict(AppError):
    status = 409
    code = "conflict"
    title = "Conflict"


class EmailTaken(Conflict):
    code = "email_taken"
    detail = "An account with this e-mail address already exists."


class UsernameTaken(Conflict):
    code = "username_taken"
    detail = "This username is taken."


class WrongPassword(AppError):
    status = 400
    code = "wrong_password"
    title = "Wrong password"
    detail = "The current password is incorrect."


class LastAdmin(Conflict):
    code = "last_admin"
    detail = "The last active administrator cannot be removed or demoted."


class AdminSetupRefused(Conflict):
    """`create-admin` or `FIRST_ADMIN_*` would hand administration to an account nobody has
    shown is the operator's, or with a password the policy refuses."""

    code = "admin_setup_refused"
    title = "Administrator not created"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class BodyTooLarge(PayloadTooLarge):
    code = "body_too_large"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RateLimited(AppError):
    """429: `what` names the limit, `retry_after` (seconds) is when its window has room again."""

    status = 429
    code = "rate_limited"
    title = "Too many requests"
    detail = "Too many requests"

    def __init__(self, retry_after: int, what: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"{what or self.detail}; try again in {_wait(retry_after)}.",
            headers={"Retry-After": str(retry_after)},
        )


class LoginLocked(RateLimited):
    code = "login_locked"
    title = "Login locked"
    detail = "Too many failed logins for this account from your address"


class LoginThrottled(RateLimited):
    code = "login_throttled"
    title = "Login throttled"
    detail = "Too many failed logins for this account"


def _wait(seconds: int) -> str:
    """A whole number of seconds, minutes or hours, rounded up: never sooner than the truth."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size:
            n = -(-seconds // size)
            return f"{n} {unit}s"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


class ServiceUnavailable(AppError):
    status = 503
    code = "dependency_unavailable"
    title = "Service unavailable"


# Seconds a client should wait before sending again a request a dependency could not serve: a
# database restart (`pg_ctl restart -m fast`) or fail-over takes about that long.
UNAVAILABLE_RETRY_AFTER_S = 1


class DatabaseUnavailable(ServiceUnavailable):
    """The database could not be reached, or lost the connection mid-request. Nothing is known
    to be saved: a write may or may not have been committed, so its client reads before sending
    it again (or sends it again if it is idempotent)."""

    code = "database_unavailable"
    detail = "The database is unavailable for a moment; try again shortly."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


# --- Images, media and background tasks ----------------------------------------------------


class ImageNotFound(NotFound):
    code = "image_not_found"
    detail = "No such image."


class TooManyImages(Conflict):
    code = "too_many_images"


class TooManyPixels(AppError):
    status = 422
    code = "image_too_large"
    title = "Image too large"


class UnreadableImage(AppError):
    status = 422
    code = "invalid_image"
    title = "Invalid image"


class MediaUnavailable(ServiceUnavailable):
    """The media storage (the bucket) could not be reached: nothing of the upload was kept."""

    code = "media_unavailable"
    detail = "Media storage is unavailable for a moment; try again shortly."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


class MediaNotFound(NotFound):
    code = "media_not_found"
    detail = "No such file, or not yours to see."

    def __init__(self) -> None:
        # Not cached anywhere: the file may become public when its post is published.
        super().__init__(headers={"Cache-Control": "no-store"})


class TaskNotFound(NotFound):
    code = "task_not_found"
    detail = "No such task."


# --- rendering --------------------------------------------------------------------------------
def problem(
    status: int,
    code: str,
    title: str | None = None,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"/problems/{code.replace('_', '-')}",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or title or HTTPStatus(status).phrase,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in errors
    ]


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem(exc.status, exc.code, exc.title, exc.message, exc.headers or None)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc.errors())
    first = errors[0] if errors else None
    detail = (
        f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        if first
        else "The request is invalid."
    )
    return problem(422, "validation_error", "Invalid request", detail, errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 400:
        # Inkwell raises AppError, never HTTPException: a 400 here is the framework failing to
        # read the body (bytes that are not UTF-8 JSON, a broken multipart form). That is a
        # malformed request like any other, so it answers what every route declares: 422.
        if isinstance(exc.__cause__, (ValueError, RecursionError)):  # not UTF-8, say
            msg, kind = "Invalid JSON", "json_invalid"
        else:
            msg, kind = detail or "The body could not be read", "body_unreadable"
        return problem(
            422,
            "validation_error",
            "Invalid request",
            f"body: {msg}",
            errors=[{"loc": ["body"], "msg": msg, "type": kind}],
        )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route at this path only; a mounted app
        # (the media files) names its own, or serves GET and HEAD.
        methods = allowed_methods(request)
        if methods:
            headers["Allow"] = ", ".join(methods)
        else:
            headers.setdefault("Allow", "GET, HEAD")
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return problem(exc.status_code, code, detail=detail, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method the routes at this request's path serve."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    path = path.removeprefix(root) if root and path.startswith(root + "/") else path
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.router.routes):
        route_methods = getattr(context.original_route, "methods", None)
        if route_methods and context.path and _path_regex(context.path).match(path):
            methods.update(route_methods)
    return sorted(methods)


@lru_cache(maxsize=512)
def _path_regex(path: str) -> re.Pattern[str]:
    return compile_path(path)[0]


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return problem(500, "internal_error", detail="Something went wrong on our side.")


# Reads that may run twice: they change nothing.
_IDEMPOTENT_READS = frozenset({"GET", "HEAD"})


class DatabaseErrorMiddleware:
    """A request the database could not serve answers 503 `database_unavailable` with
    `Retry-After`, never a bare 500. A read whose pooled connection died under it (the server
    restarted) runs once more, on a fresh connection, before any of its answer was sent. A write
    does not: whether it was committed is unknown.

    Plain ASGI middleware just outside the routes (inside CORS and the body limits): a route
    handler would turn the error into an answer before anything could run the read again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        received: list[Message] = []

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def recorded_receive() -> Message:
            message = await receive()
            received.append(message)
            return message

        try:
            await self.app(scope, recorded_receive, tracked_send)
            return
        except Exception as error:
            if started or not unavailable(error):
                raise
            if not (scope["method"] in _IDEMPOTENT_READS and connection_lost(error)):
                await _database_unavailable(scope, error)(scope, receive, send)
                return
            logger.info(
                "database connection lost: reading again on a fresh one",
                extra={"path": scope["path"], "error": repr(error)},
            )
        replay = iter(received)

        async def replayed_receive() -> Message:
            return next(replay, None) or await receive()

        try:
            await self.app(scope, replayed_receive, tracked_send)
        except Exception as error:
            if started or not unavailable(error):
                raise
            await _database_unavailable(scope, error)(scope, receive, send)


def _database_unavailable(scope: Scope, error: Exception) -> JSONResponse:
    logger.warning(
        "database unavailable: answered 503",
        extra={"method": scope["method"], "path": scope["path"], "error": repr(error)},
    )
    exc = DatabaseUnavailable()
    return problem(exc.status, exc.code, exc.title, exc.message, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    # Added first, so innermost: CORS and the body limits see its 503 like any other answer.
    app.add_middleware(DatabaseErrorMiddleware)
