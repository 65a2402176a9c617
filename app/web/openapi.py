"""The OpenAPI document as a contract: errors documented as problem+json only, optional
authentication said where it is optional, bodies documented only where there is one, links from
what a route creates to the routes that use it, and the bodies parsed by hand in its
components. tests/test_schemathesis.py holds the server to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Response
from fastapi.dependencies.utils import get_typed_return_annotation
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from app.dependencies import current_principal, optional_principal, optional_reader
from app.schemas.common import NulFreeModel, forbid_nul
from app.schemas.token import LoginRequest
from app.web.http import dependants
from app.web.problems import PROBLEM_JSON

# Bodies parsed by hand (JSON or a form) and referenced from `openapi_extra`.
_REFERENCED_ONLY = (LoginRequest,)


def install_openapi(app: FastAPI, documented: Sequence[BaseRoute] | None = None) -> None:
    """Builds the schema once, on first use, with the clean-ups below. `documented`: the routes
    in the order the document lists them, when the app matches them in another order."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=documented if documented is not None else app.routes,
                tags=app.openapi_tags,
            )
            app.openapi_schema = clean_up(
                schema,
                _optional_auth_operations(app.routes),
                _bodiless_operations(app.routes),
                _nul_free_query_parameters(app.routes),
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def clean_up(
    schema: dict[str, Any],
    optional_auth: set[str],
    bodiless: set[str] | None = None,
    nul_free_query: dict[str, set[str]] | None = None,
) -> dict[str, Any]:
    """Every error response carries `application/problem+json` and nothing else (routes declare
    their errors, 422 included, with `problem_responses`, so FastAPI adds no 422 schema of its
    own); routes that anyone may call, and that answer more to a signed-in caller, say the
    token is optional; routes that answer an empty `Response` (a 202) document no body, where
    FastAPI would promise JSON; query parameters read into a `NulFreeModel` say they refuse
    NUL, as its bodies do; and what a route creates links to the routes that use it."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("operationId") in optional_auth:
                operation["security"] = [{}, *operation.get("security", [])]
            nul_free = (nul_free_query or {}).get(operation.get("operationId", ""), set())
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and parameter.get("name") in nul_free:
                    forbid_nul(parameter.get("schema", {}))
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if PROBLEM_JSON in content:
                    response["content"] = {PROBLEM_JSON: content[PROBLEM_JSON]}
                elif operation.get("operationId") in (bodiless or ()) and status.startswith("2"):
                    response.pop("content", None)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in _REFERENCED_ONLY:
        components.setdefault(
            model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}")
        )
    add_links(schema)
    return schema


def add_links(schema: dict[str, Any]) -> None:
    """OpenAPI links from each POST that creates something (201, 202) to the operations whose
    path parameters its answer fills: `POST /api/posts` to `GET /api/posts/{post_id}` (the new
    `id`) and the post's sub-resources, an upload to its image (the path's `post_id`, the new
    `id`) and to its task (`task_id`). Generated clients and Schemathesis' stateful phase
    follow them."""
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    components: dict[str, Any] = schema.get("components", {}).get("schemas", {})
    for source_path, item in paths.items():
        source = item.get("post")
        if not source:
            continue
        for status, response in source.get("responses", {}).items():
            if status not in ("201", "202"):
                continue
            body = _resolve(components, response.get("content", {}).get("application/json", {}))
            properties = body.get("properties", {}) if body else {}
            if not properties:
                continue
            links = {}
            for target_path, target_item in paths.items():
                parameters = _link_parameters(source_path, target_path, properties, components)
                if parameters is None:
                    continue
                for method, target in target_item.items():
                    if method in _METHODS and target.get("operationId"):
                        links[target["operationId"]] = {
                            "operationId": target["operationId"],
                            "parameters": parameters,
                        }
            if links:
                response["links"] = links


_METHODS = ("get", "put", "post", "delete", "patch")


def _resolve(components: dict[str, Any], holder: dict[str, Any]) -> dict[str, Any] | None:
    node = holder.get("schema", {})
    ref = node.get("$ref", "") if isinstance(node, dict) else ""
    target = components.get(ref.rsplit("/", 1)[-1]) if ref else node
    return target if isinstance(target, dict) else None


def _link_parameters(
    source_path: str, target_path: str, properties: dict[str, Any], components: dict[str, Any]
) -> dict[str, str] | None:
    """How to fill every path parameter of `target_path` from a created resource at
    `source_path`, or None when some cannot be filled or none comes from the answer."""
    names = [segment[1:-1] for segment in target_path.split("/") if segment.startswith("{")]
    source_names = {segment[1:-1] for segment in source_path.split("/") if segment.startswith("{")}
    # The created resource's own id fills the first parameter after the collection's path.
    rest = target_path.removeprefix(source_path + "/") if target_path != source_path else ""
    own = rest.split("/", 1)[0][1:-1] if rest.startswith("{") and rest != target_path else None
    collection = source_path.rstrip("/").rsplit("/", 1)[-1]
    parameters = {}
    for name in names:
        if name in source_names:
            parameters[name] = f"$request.path.{name}"
        elif name in properties:
            parameters[name] = f"$response.body#/{name}"
        elif name == own and "id" in properties:
            parameters[name] = "$response.body#/id"
        elif name == own and _has_id(properties.get(collection.removesuffix("s")), components):
            parameters[name] = f"$response.body#/{collection.removesuffix('s')}/id"
        else:
            return None
    if not any(value.startswith("$response") for value in parameters.values()):
        return None
    return parameters


def _has_id(node: Any, components: dict[str, Any]) -> bool:
    if not isinstance(node, dict):
        return False
    target = _resolve(components, {"schema": node})
    return bool(target) and "id" in (target or {}).get("properties", {})


def _optional_auth_operations(routes: Sequence[BaseRoute]) -> set[str]:
    """The operations that read the caller's token when there is one, but need none."""
    found = set()
    for context in iter_route_contexts(routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema and route.operation_id:
            calls = {dependant.call for dependant in dependants(route.dependant)}
            optional = optional_principal in calls or optional_reader in calls
            if optional and current_principal not in calls:
                found.add(route.operation_id)
    return found


def _bodiless_operations(routes: Sequence[BaseRoute]) -> set[str]:
    """The operations that return a bare `Response` (an empty 202, say) with no response model:
    FastAPI cannot know their body and would document `application/json` anyway."""
    found = set()
    for context in iter_route_contexts(routes):
        route = context.original_route
        if (
            isinstance(route, APIRoute)
            and route.include_in_schema
            and route.operation_id
            and route.response_model is None
            and get_typed_return_annotation(route.endpoint) is Response
        ):
            found.add(route.operation_id)
    return found


def _nul_free_query_parameters(routes: Sequence[BaseRoute]) -> dict[str, set[str]]:
    """By operation, the query parameters that a `NulFreeModel` reads."""
    found: dict[str, set[str]] = {}
    for context in iter_route_contexts(routes):
        route = context.original_route
        if not (isinstance(route, APIRoute) and route.include_in_schema and route.operation_id):
            continue
        for dependant in dependants(route.dependant):
            for param in dependant.query_params:
                model = param.field_info.annotation
                if isinstance(model, type) and issubclass(model, NulFreeModel):
                    found.setdefault(route.operation_id, set()).update(
                        field.alias or name for name, field in model.model_fields.items()
                    )
    return found
