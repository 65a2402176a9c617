"""The OpenAPI document as a contract: errors documented as problem+json only, and no
FastAPI default validation schema that the API never sends."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.errors import PROBLEM_JSON
from app.schemas.common import problem_responses

_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


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
            app.openapi_schema = clean_up(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def clean_up(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error response carries `application/problem+json` and nothing else; FastAPI's own
    422 schema (which Inkwell never sends) is replaced by the Problem document."""
    problem_422 = problem_responses(422)[422]
    problem_422 = {"description": problem_422["description"], "content": problem_422["content"]}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if "HTTPValidationError" in str(content):
                    operation["responses"][status] = problem_422
                elif PROBLEM_JSON in content:
                    response["content"] = {PROBLEM_JSON: content[PROBLEM_JSON]}
    components = schema.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)
    return schema
