"""Errors in RealWorld's shape: `{"errors": {"<field>": ["<message>"]}}`, with its statuses
(401 missing or bad token, 403 not the owner, 404, 409 taken, 422 invalid). The services raise
Inkwell's domain errors; these handlers only translate them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.conduit.schemas import BLANK, BLANK_MESSAGE
from app.errors import (
    AppError,
    CannotDeleteComment,
    CannotFollowYourself,
    CommentNotFound,
    EmailNotVerified,
    EmailTaken,
    InvalidCredentials,
    NotCommentAuthor,
    NotPostAuthor,
    PostNotFound,
    ProfileNotFound,
    TokenExpired,
    Unauthorized,
    UsernameTaken,
    UserNotFound,
)
from app.web.problems import allowed_methods

logger = logging.getLogger(__name__)

# The scheme RealWorld documents; `Bearer` is accepted too.
WWW_AUTHENTICATE = {"WWW-Authenticate": "Token"}


class TokenMissing(Unauthorized):
    code = "token_missing"
    detail = "Send a token: `Authorization: Token <jwt>`."


# Inkwell's errors that RealWorld names: the field and the message it uses.
FIELD_MESSAGES: Mapping[type[AppError], tuple[str, str]] = {
    TokenMissing: ("token", "is missing"),
    Unauthorized: ("token", "is missing"),
    InvalidCredentials: ("credentials", "invalid"),
    TokenExpired: ("token", "has expired"),
    EmailTaken: ("email", "has already been taken"),
    UsernameTaken: ("username", "has already been taken"),
    PostNotFound: ("article", "not found"),
    UserNotFound: ("profile", "not found"),
    NotPostAuthor: ("article", "forbidden"),
    ProfileNotFound: ("profile", "not found"),
    CannotFollowYourself: ("profile", "is yourself: you cannot follow yourself"),
    CommentNotFound: ("comment", "not found"),
    NotCommentAuthor: ("comment", "forbidden"),
    CannotDeleteComment: ("comment", "forbidden"),
    EmailNotVerified: ("email", "must be verified before publishing"),
}
# Whatever else, by status.
STATUS_MESSAGES: Mapping[int, tuple[str, str]] = {
    401: ("token", "is invalid"),
    403: ("body", "forbidden"),
    404: ("body", "not found"),
}
# A hint for a value that breaks a field's pattern, where "is invalid" alone would not help.
PATTERN_HINTS: Mapping[str, str] = {
    "username": "is invalid (3 to 32 characters: a-z, 0-9 and _)",
    "image": "is invalid (an https URL)",
    "tagList": "is invalid (1 to 32 characters each: letters, digits, - and _)",
}
# The body's wrappers (`{"user": {...}}`): errors are named by the field inside them.
WRAPPERS = frozenset({"body", "user", "article", "comment"})


def errors(
    status: int, fields: Mapping[str, Sequence[str]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"errors": {name: list(messages) for name, messages in fields.items()}},
        status_code=status,
        headers=dict(headers or {}),
    )


def translate(exc: AppError) -> tuple[str, str]:
    """The field and message RealWorld uses for a domain error."""
    named = FIELD_MESSAGES.get(type(exc))
    if named is not None:
        return named
    return STATUS_MESSAGES.get(exc.status, ("body", exc.message))


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    field, message = translate(exc)
    headers = dict(exc.headers)
    if exc.status == 401:
        headers |= WWW_AUTHENTICATE
    return errors(exc.status, {field: [message]}, headers)


def _field(loc: Iterable[Any]) -> str:
    """The field a validation error is about: the last name past the wrappers, or `body`."""
    names = [str(part) for part in loc if isinstance(part, str)]
    inner = [name for name in names if name not in WRAPPERS]
    return inner[-1] if inner else (names[-1] if len(names) > 1 else "body")


def _message(field: str, error: Mapping[str, Any]) -> str:
    kind, value, ctx = error.get("type", ""), error.get("input"), error.get("ctx") or {}
    if (
        kind in ("missing", BLANK)
        or value is None
        or (isinstance(value, str) and not value.strip())
    ):
        return BLANK_MESSAGE
    if kind == "string_too_short":
        return f"is too short (minimum is {ctx.get('min_length')} characters)"
    if kind == "string_too_long":
        return f"is too long (maximum is {ctx.get('max_length')} characters)"
    if kind == "too_long":
        return f"is too long (maximum is {ctx.get('max_length')} items)"
    if kind == "string_pattern_mismatch":
        return PATTERN_HINTS.get(field, "is invalid")
    if kind == "json_invalid":
        return "is not valid JSON"
    return "is invalid"


def validation_errors(raw: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for error in raw:
        field = _field(error.get("loc", ()))
        message = _message(field, error)
        if message not in fields.setdefault(field, []):
            fields[field].append(message)
    return fields or {"body": ["is invalid"]}


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return errors(422, validation_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 400:  # a body the framework could not read: invalid, like any other
        return errors(422, {"body": ["is invalid"]})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
        return errors(405, {"body": ["method not allowed"]}, headers)
    if exc.status_code == 404:
        return errors(404, {"body": ["not found"]}, headers)
    detail = exc.detail if isinstance(exc.detail, str) else "is invalid"
    return errors(exc.status_code, {"body": [detail]}, headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return errors(500, {"body": ["something went wrong on our side"]})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
