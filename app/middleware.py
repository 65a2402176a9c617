"""Request ids, access logs and request metrics, as plain ASGI middleware (no per-request task
overhead)."""

from __future__ import annotations

import logging
import os
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_logger = logging.getLogger("app.access")


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


class RequestIdMiddleware:
    """Takes `X-Request-ID` from the request (or makes one), echoes it, logs the request and
    counts it in the metrics by its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else os.urandom(16).hex()
        context = RequestContext(request_id)
        root_path = scope.get("root_path", "")
        token = request_context.set(context)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not response_started:
                raise
            # Starlette's error middleware has sent the 500 and re-raises for the server to
            # log; the app's handler has logged it already, with the request id (the server's
            # copy would have none).
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope, root_path)
            metrics.observe_request(scope["method"], route, status, seconds)
            access_logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "user_id": context.user_id,
                    "client": (scope.get("client") or ("-",))[0],
                },
            )
            request_context.reset(token)


def _route_template(scope: Scope, root_path: str) -> str:
    """The matched route's template (`/api/posts/{post_id}`), a mount's prefix (`/media/{path}`),
    or `<unmatched>`: never the raw path, whose ids would make a metric series each."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return str(route)
    mounted_at = scope.get("root_path", "")
    if mounted_at != root_path:  # a Mount (static files) moved its prefix into root_path
        return f"{mounted_at[len(root_path) :]}/{{path}}"
    return metrics.UNMATCHED_ROUTE
