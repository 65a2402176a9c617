"""HTTP details shared by routes: conditional GETs, and query parameters given once."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send


def conditional_json(body: bytes, if_none_match: str | None) -> Response:
    """A JSON body with a strong ETag; 304 when the client already has this version."""
    etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Authorization"}
    if if_none_match and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    candidates = {c.strip().removeprefix("W/") for c in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


async def single_valued_query(request: Request) -> None:
    """A query parameter that is not a list (`tag` is one) is given at most once: FastAPI would
    quietly keep the last of `?q=a&q=b`, answering a question nobody asked. (Parameters a route
    does not take are ignored, repeated or not.)"""
    if not request.scope.get("query_string"):  # most requests: nothing to count
        return
    counts = Counter(name for name, _ in request.query_params.multi_items())
    repeated = {name for name, count in counts.items() if count > 1}
    route = request.scope.get("route")
    if not repeated or not isinstance(route, APIRoute):
        return
    refused = sorted(repeated & _single_valued(route))
    if refused:
        raise RequestValidationError(
            [
                {"loc": ("query", name), "msg": "Give this parameter once", "type": "repeated"}
                for name in refused
            ]
        )


_SINGLE_VALUED_ATTR = "_inkwell_single_valued"


def _single_valued(route: APIRoute) -> frozenset[str]:
    """Worked out once per route and kept on it (routes compare by value, so they cannot key
    a dict)."""
    known: frozenset[str] | None = getattr(route, _SINGLE_VALUED_ATTR, None)
    if known is None:
        known = _find_single_valued(route)
        setattr(route, _SINGLE_VALUED_ATTR, known)
    return known


def _find_single_valued(route: APIRoute) -> frozenset[str]:
    """The route's query parameters that take one value, query models' fields included."""
    found: set[str] = set()
    for dependant in dependants(route.dependant):
        for param in dependant.query_params:
            annotation = param.field_info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found.update(
                    field.alias or name
                    for name, field in annotation.model_fields.items()
                    if not _is_list(field.annotation)
                )
            elif not _is_list(annotation):
                found.add(param.alias)
    return frozenset(found)


def dependants(dependant: Dependant) -> Iterator[Dependant]:
    """A route's dependant and all its sub-dependencies, depth first."""
    yield dependant
    for child in dependant.dependencies:
        yield from dependants(child)


def _is_list(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_list(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_is_list(arg) for arg in get_args(annotation))
    return origin in (list, set, tuple, frozenset) or annotation in (list, set, tuple, frozenset)


class HttpMiddleware:
    """Plain ASGI middleware (no per-request task) for HTTP requests only: lifespan and other
    scopes pass through untouched. Subclasses implement `handle`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
