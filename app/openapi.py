"""The OpenAPI document as a contract: errors documented as problem+json only, and no
FastAPI default validation schema that the API never sends."""

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
from app.schemas.common import problem_responses
from app.schemas.token import LoginRequest

_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
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
    """Every error response carries `application/problem+json` and nothing else; FastAPI's own
    422 schema (which Inkwell never sends) is replaced by the Problem document; routes that
    anyone may call, and that answer more to a signed-in caller, say the token is optional."""
    problem_422 = problem_responses(422)[422]
    problem_422 = {"description": problem_422["description"], "content": problem_422["content"]}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("operationId") in optional_auth:
                operation["security"] = [{}, *operation.get("security", [])]
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if "HTTPValidationError" in str(content):
                    operation["responses"][status] = problem_422
                elif PROBLEM_JSON in content:
                    response["content"] = {PROBLEM_JSON: content[PROBLEM_JSON]}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)
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
