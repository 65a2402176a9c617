"""The request context: what every log line of a request, or of a task it queued, carries.

The HTTP middleware opens it, the authentication dependency names the user in it, the task
runners open it again around a job with the id of the request that queued the job, and the log
filter reads it. Nothing here knows HTTP."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class RequestContext:
    """What every log line of a request (or of a task it queued) carries. The authentication
    dependency fills `user_id` in; the object is shared, so the access log sees it."""

    request_id: str = "-"
    user_id: int | None = None


request_context: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def current_request_id() -> str | None:
    context = request_context.get()
    return context.request_id if context else None


def set_user(user_id: int) -> None:
    """Names the signed-in user in the logs of the current request."""
    context = request_context.get()
    if context is not None:
        context.user_id = user_id
