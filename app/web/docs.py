"""Swagger UI at `/docs` and ReDoc at `/redoc`, with every asset served by Inkwell itself.

The JavaScript and CSS come from the pinned `fastapi-offline` package (Swagger UI 5 and
ReDoc 2); upgrading it is a lock-file change. Assets are served under a URL that carries the
package version, so browsers may cache them for a year: a new version is a new URL.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

OPENAPI_URL = "/openapi.json"
ASSETS_VERSION = version("fastapi-offline")
ASSETS_URL = f"/docs/assets/{ASSETS_VERSION}"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
IMMUTABLE = b"public, max-age=31536000, immutable"

SWAGGER_UI_PARAMETERS = {
    "persistAuthorization": True,  # the token survives a reload
    "displayRequestDuration": True,
    "tryItOutEnabled": True,
    "filter": True,
    "docExpansion": "list",
    "defaultModelsExpandDepth": 0,
    "validatorUrl": None,  # no badge fetched from validator.swagger.io
}


# ReDoc's bundle draws a "by Redocly" logo from its CDN, with no option to turn it off: the
# only request the pages would make off the server. Served without that URL, the <img> has no
# source, asks for nothing, and ReDoc hides it.
REDOC_BUNDLE = "redoc.standalone.js"
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@lru_cache(maxsize=1)
def _offline_redoc_bundle() -> tuple[bytes, str]:
    """The bundle without the logo URL, and its ETag."""
    body = (ASSETS_DIR / REDOC_BUNDLE).read_bytes().replace(REDOC_CDN_LOGO, b"")
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


class ImmutableAssets(StaticFiles):
    """Static files with a year-long, immutable `Cache-Control`: their URL is versioned."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path == REDOC_BUNDLE:
            body, etag = _offline_redoc_bundle()
            if Headers(scope=scope).get("if-none-match") == etag:
                return Response(status_code=304, headers={"etag": etag})
            return Response(body, media_type="text/javascript", headers={"etag": etag})
        return await super().get_response(path, scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_cache_control(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (200, 304):
                message["headers"] = [*message.get("headers", []), (b"cache-control", IMMUTABLE)]
            await send(message)

        await super().__call__(scope, receive, send_with_cache_control)


def install_docs(app: FastAPI) -> None:
    """Adds `/openapi.json`, `/docs`, `/docs/oauth2-redirect`, `/redoc` and the assets the pages
    load (as routes of the app: metrics and logs name them by their path)."""
    openapi_url = OPENAPI_URL
    app.mount(ASSETS_URL, ImmutableAssets(directory=ASSETS_DIR), name="docs-assets")

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _no_cache(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{app.title} API",
                swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
                oauth2_redirect_url="/docs/oauth2-redirect",
                swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
            )
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _no_cache(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{app.title} API reference",
                redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )


def _no_cache(response: HTMLResponse) -> HTMLResponse:
    """The pages are small and name the asset version: always revalidate them."""
    response.headers["Cache-Control"] = "no-cache"
    return response
