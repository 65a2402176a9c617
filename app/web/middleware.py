"""Request ids, access logs, request metrics, body limits and security headers, as plain ASGI
middleware (no per-request task overhead)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics
from app.core.context import RequestContext, request_context
from app.errors import BodyTooLarge, PayloadTooLarge
from app.web.http import HttpMiddleware
from app.web.problems import problem
from app.web.uploads import form_limit

REQUEST_ID_HEADER = b"x-request-id"  # the HTTP header a request id comes and goes in
# HTTP versions whose request bodies are announced by Content-Length or Transfer-Encoding (in
# HTTP/2 and 3 a body may come without either).
_FRAMED_BY_HEADERS = frozenset({"1.0", "1.1"})
MULTIPART = "multipart/form-data"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_logger = logging.getLogger("app.access")


# The headers every response carries, whoever answers it: routes, error handlers, the 500 page,
# the docs and the media files (a response that sets one itself keeps its own value).
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"),)


class RequestIdMiddleware(HttpMiddleware):
    """Takes `X-Request-ID` from the request (or makes one), echoes it, adds the security
    headers, logs the request and counts it in the metrics by its route template. Outermost, so
    that no response goes without them (one wrapper of `send`, one copy of the headers)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _incoming_request_id(scope["headers"]) or os.urandom(16).hex()
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
                # A new list: a response's own header list may be sent again.
                headers = message["headers"] = list(message.get("headers", ()))
                for name, value in SECURITY_HEADERS:
                    if not any(present.lower() == name for present, _ in headers):
                        headers.append((name, value))
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
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
            _observe(scope["method"], route, status, seconds)
            if access_logger.isEnabledFor(logging.INFO):
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


# The metric series of each (method, route, status) seen, so that a request does not look its
# label values up again; bounded, since a client chooses the method.
_SERIES: dict[tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]] = {}
_MAX_SERIES = 2_000


def _observe(method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        if len(_SERIES) >= _MAX_SERIES:
            metrics.observe_request(method, route, status, seconds)
            return
        counter = metrics.HTTP_REQUESTS.labels(method, route, str(status))
        duration = metrics.HTTP_DURATION.labels(method, route)
        series = _SERIES[key] = (counter.inc, duration.observe)
    series[0]()
    series[1](seconds)


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The client's `X-Request-ID`, if it is a valid one (found without copying the headers)."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            incoming = value.decode("latin-1")
            return incoming if _VALID_REQUEST_ID.match(incoming) else None
    return None


def _route_template(scope: Scope, root_path: str) -> str:
    """The matched route's template (`/api/posts/{post_id}`), a mount's prefix (`/media/{path}`),
    or `<unmatched>`: never the raw path, whose ids would make a metric series each."""
    route = getattr(scope.get("route"), "path", None)
    mounted_at = scope.get("root_path", "")
    # A Mount moved its prefix into root_path: a mounted app's routes (/conduit) carry it too.
    prefix = mounted_at[len(root_path) :] if mounted_at != root_path else ""
    if route:
        return f"{prefix}{route}"
    if prefix:  # static files, or a path a mounted app has no route for
        return f"{prefix}/{{path}}"
    return metrics.UNMATCHED_ROUTE


class LivenessShortcut(HttpMiddleware):
    """Answers `GET /health` with its fixed body before routing and dependency resolution: an
    orchestrator polls it often, and it has nothing to resolve. It sits inside the request-id
    middleware, so the answer still carries `X-Request-ID`, the security headers, its access-log
    line and its metrics under the route's template. Anything else, and a CORS request when
    CORS is on, goes through the whole stack."""

    BODY = b'{"status":"ok"}'

    def __init__(self, app: ASGIApp, *, route: BaseRoute, cors: bool) -> None:
        super().__init__(app)
        self.route = route
        # A body (which the body limit bounds) or, with CORS on, an Origin: the whole stack.
        self._passed_on = frozenset(
            {b"content-length", b"transfer-encoding", *((b"origin",) if cors else ())}
        )
        self._start: Message = {
            "type": "http.response.start",
            "status": 200,
            "headers": (
                (b"content-length", str(len(self.BODY)).encode()),
                (b"content-type", b"application/json"),
            ),
        }
        self._body: Message = {"type": "http.response.body", "body": self.BODY}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["path"] != "/health"
            or scope["method"] != "GET"
            or scope.get("root_path")
            or scope.get("http_version") not in _FRAMED_BY_HEADERS
            or any(name in self._passed_on for name, _ in scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        await send(dict(self._start))
        await send(self._body)


@dataclass(frozen=True, slots=True)
class _UploadRoute:
    path_regex: re.Pattern[str]
    methods: frozenset[str]


class BodyLimitMiddleware(HttpMiddleware):
    """Bounds every request body before it is read: `max_body_bytes`, or for an upload route
    (one whose documented body is multipart/form-data) the upload form's limit.

    A declared Content-Length over the limit is answered 413 at once, without calling the app.
    Otherwise (chunked bodies, bodies without a Content-Length, or a length that lies) the bytes
    are counted as the app receives them: past the limit the app gets an error instead of more
    data, nothing more is read, and whatever the app made of it is answered 413."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_upload_bytes: int,
        routes: Sequence[BaseRoute],
    ) -> None:
        super().__init__(app)
        self.upload_routes = list(_upload_routes(routes))
        # Both limits and their errors are fixed at start-up: nothing is built per request.
        upload_detail = f"The upload is larger than {max_upload_bytes} bytes."
        body_detail = f"The request body is larger than {max_body_bytes} bytes."
        self._upload_limit: tuple[int, Callable[[], PayloadTooLarge]] = (
            form_limit(max_upload_bytes),
            partial(PayloadTooLarge, upload_detail),
        )
        self._body_limit: tuple[int, Callable[[], PayloadTooLarge]] = (
            max_body_bytes,
            partial(BodyTooLarge, body_detail),
        )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared, chunked = _body_headers(scope)
        if declared is None and not chunked and scope.get("http_version") in _FRAMED_BY_HEADERS:
            # HTTP/1.x: a request with neither header has no body, so there is nothing to bound.
            await self.app(scope, receive, send)
            return
        limit, too_large = self._limit_for(scope)
        if declared is not None and declared > limit:
            await _answer(too_large(), scope, receive, send)
            return

        received = 0
        exceeded = False
        answered = False
        app_started = False

        async def bounded_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise too_large()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered, app_started
            if exceeded and not app_started:  # the app's answer to the error: ours instead
                if not answered:
                    answered = True
                    await _answer(too_large(), scope, receive, send)
                return
            app_started = app_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
            if not answered and not app_started:
                await _answer(too_large(), scope, receive, send)

    def _limit_for(self, scope: Scope) -> tuple[int, Callable[[], PayloadTooLarge]]:
        """The limit on this request's body, and the error that says it was passed."""
        path = _route_path(scope)
        if any(
            scope["method"] in route.methods and route.path_regex.match(path)
            for route in self.upload_routes
        ):
            return self._upload_limit
        return self._body_limit


def _upload_routes(routes: Sequence[BaseRoute]) -> Iterator[_UploadRoute]:
    """The routes whose documented request body is a multipart/form-data upload."""
    for context in iter_route_contexts(routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        body = (route.openapi_extra or {}).get("requestBody", {})
        if MULTIPART in body.get("content", {}):
            yield _UploadRoute(context.path_regex, frozenset(context.methods or ()))


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the root path, if the server put it in front."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


def _body_headers(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None if absent or not a number), and whether the body is
    sent in chunks or its length is unknown (Transfer-Encoding, or a Content-Length that is not
    a number): either way the bytes are counted as they arrive."""
    length: int | None = None
    unknown = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit():
                length = int(value)
            else:
                unknown = True
        elif name == b"transfer-encoding":
            unknown = True
    return length, unknown


async def _answer(error: PayloadTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    # The server drops whatever of the body still arrives once the answer is complete, so the
    # client reads the 413 instead of a reset connection.
    response = problem(error.status, error.code, error.title, error.message)
    await response(scope, receive, send)
