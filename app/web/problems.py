"""Every error as problem+json (RFC 9457): the handlers of the domain errors of `app.errors`,
of validation and of the framework's own HTTP errors, and the middleware that turns a database
outage into 503."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import Message, Receive, Scope, Send

from app.database.session import connection_lost, unavailable
from app.errors import AppError, DatabaseUnavailable
from app.web.http import HttpMiddleware

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


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
    return problem(exc.status, exc.code, exc.title, exc.message, exc.headers or None, **exc.extra)


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


class DatabaseErrorMiddleware(HttpMiddleware):
    """A request the database could not serve answers 503 `database_unavailable` with
    `Retry-After`, never a bare 500. A read whose pooled connection died under it (the server
    restarted) runs once more, on a fresh connection, before any of its answer was sent. A write
    does not: whether it was committed is unknown.

    Plain ASGI middleware just outside the routes (inside CORS and the body limits): a route
    handler would turn the error into an answer before anything could run the read again."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
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
