"""The OpenAPI document as a contract: errors documented as problem+json only, optional
authentication said where it is optional, and the bodies parsed by hand in its components."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from app.dependencies import current_principal, optional_principal
from app.errors import PROBLEM_JSON
from app.schemas.token import LoginRequest

# Bodies parsed by hand (JSON or a form) and referenced from `openapi_extra`.
_REFERENCED_ONLY = (LoginRequest,)


def install_openapi(app: FastAPI) -> None:
    """Builds the schema once, on first use, with the clean-ups below."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            app.openapi_schema = clean_up(schema, _optional_auth_operations(app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def clean_up(schema: dict[str, Any], optional_auth: set[str]) -> dict[str, Any]:
    """Every error response carries `application/problem+json` and nothing else (routes declare
    their errors, 422 included, with `problem_responses`, so FastAPI adds no 422 schema of its
    own); routes that anyone may call, and that answer more to a signed-in caller, say the
    token is optional."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("operationId") in optional_auth:
                operation["security"] = [{}, *operation.get("security", [])]
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_JSON in content:
                    response["content"] = {PROBLEM_JSON: content[PROBLEM_JSON]}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in _REFERENCED_ONLY:
        components.setdefault(
            model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}")
        )
    return schema


def _optional_auth_operations(routes: Sequence[BaseRoute]) -> set[str]:
    """The operations that read the caller's token when there is one, but need none."""
    found = set()
    for context in iter_route_contexts(routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema and route.operation_id:
            calls = {dependant.call for dependant in _walk(route.dependant)}
            if optional_principal in calls and current_principal not in calls:
                found.add(route.operation_id)
    return found


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for child in dependant.dependencies:
        yield from _walk(child)
