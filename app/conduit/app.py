"""The Conduit sub-application, mounted at /conduit with its own OpenAPI document and docs."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from app.conduit.dependencies import current_principal, optional_principal
from app.conduit.errors import install_error_handlers
from app.conduit.routes import articles, comments, profiles, tags, users
from app.config import Settings
from app.web.docs import ASSETS_URL, SWAGGER_UI_PARAMETERS
from app.web.http import dependants, single_valued_query
from app.web.problems import DatabaseErrorMiddleware

CONDUIT_PATH = "/conduit"

DESCRIPTION = """
The [RealWorld](https://github.com/realworld-apps/realworld) API 2.0 ("Conduit"), served by
Inkwell over the same accounts and posts as `/api`: point any RealWorld frontend at
`/conduit/api`.

Press **Authorize** and enter `Token <token>` with the `token` that logging in answers with.
Errors take RealWorld's shape: `{"errors": {"body": ["can't be blank"]}}`.
"""


def create_conduit_app(settings: Settings) -> FastAPI:
    conduit = FastAPI(
        title="Conduit (RealWorld API) on Inkwell",
        version="2.0.0",
        description=DESCRIPTION,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(single_valued_query)],
    )
    for module in (users, profiles, articles, comments, tags):
        conduit.include_router(module.router)
    if settings.docs_enabled:
        _install_docs(conduit)
    _install_openapi(conduit)
    install_error_handlers(conduit)
    conduit.add_middleware(DatabaseErrorMiddleware)
    conduit.add_middleware(_WithoutTrailingSlash)
    return conduit


class _WithoutTrailingSlash:
    """`POST /api/articles/` (as a well-known frontend sends it) is `POST /api/articles`:
    answered at once, not redirected, since a browser will not follow a redirect of a
    cross-origin request it had to ask permission for."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = dict(scope)
            scope["path"] = path.rstrip("/") or "/"
            raw: bytes | None = scope.get("raw_path")
            if raw is not None:
                scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


def mount_conduit(app: FastAPI) -> None:
    """Mounts the Conduit API at /conduit, sharing the app's state (its database, stores and
    settings); the app's middleware (CORS, body limits, request ids) covers it too."""
    conduit = create_conduit_app(app.state.settings)
    conduit.state = app.state
    app.router.routes.append(_WholeMount(CONDUIT_PATH, app=conduit, name="conduit"))


class _WholeMount(Mount):
    """A mount whose paths may hold any character, a line feed included (`%0A` in a slug):
    those are the Conduit app's to answer (404 in its shape), not the outer app's."""

    def __init__(self, path: str, app: ASGIApp, name: str) -> None:
        super().__init__(path, app=app, name=name)
        self.path_regex = re.compile(self.path_regex.pattern, re.DOTALL)


def _install_openapi(conduit: FastAPI) -> None:
    """The document says where a token is optional (reads that answer more to a signed-in
    caller, `following` and `favorited`): `security: [{}, {"Token": []}]`."""
    build = conduit.openapi

    def openapi() -> dict[str, Any]:
        if conduit.openapi_schema is None:
            schema = build()
            optional = _optional_auth_operations(conduit)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if operation.get("operationId") in optional:
                        operation["security"] = [{}, *operation.get("security", [])]
        return conduit.openapi_schema or {}

    conduit.openapi = openapi  # type: ignore[method-assign]


def _optional_auth_operations(conduit: FastAPI) -> set[str]:
    found = set()
    for context in iter_route_contexts(conduit.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.operation_id:
            calls = {dependant.call for dependant in dependants(route.dependant)}
            if optional_principal in calls and current_principal not in calls:
                found.add(route.operation_id)
    return found


def _install_docs(conduit: FastAPI) -> None:
    """Swagger UI at /conduit/docs, with the assets Inkwell's own docs serve."""

    @conduit.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        response = get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=conduit.title,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        response.headers["Cache-Control"] = "no-cache"
        return response
