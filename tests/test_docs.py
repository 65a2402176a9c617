"""The docs pages without a browser: every asset they name is served by Inkwell, cached by
version, and the pages go away with DOCS_ENABLED=false. (tests/test_docs_browser.py renders
them in Chromium.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib.metadata import version

import httpx
import pytest

from app.config import Settings
from app.web.docs import ASSETS_URL
from tests.conftest import running_app
from tests.factories import PASSWORD, register

ASSET_REFERENCE = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


def referenced_urls(html: str) -> list[str]:
    return ASSET_REFERENCE.findall(html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_every_asset_from_inkwell_itself(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"
    urls = referenced_urls(response.text)
    assert urls, "the page names its script"
    for url in urls:
        assert url.startswith(ASSETS_URL + "/"), f"{url} is not served by Inkwell"
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.content
    assert "googleapis" not in response.text
    assert "cdn.jsdelivr" not in response.text


async def test_swagger_ui_keeps_the_authorization_and_asks_no_validator(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/docs")).text
    assert '"persistAuthorization": true' in html
    assert '"validatorUrl": null' in html  # no badge fetched from validator.swagger.io
    redirect = await client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200


async def test_asset_urls_carry_the_package_version(client: httpx.AsyncClient) -> None:
    assert f"/docs/assets/{version('fastapi-offline')}" == ASSETS_URL
    missing = await client.get(f"{ASSETS_URL}/nothing-here.js")
    assert missing.status_code == 404
    assert "immutable" not in missing.headers.get("cache-control", "")


async def test_the_password_flow_of_authorize_points_at_the_token_route(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == "/api/token"
    tags = {tag["name"]: tag["description"] for tag in schema["tags"]}
    assert {"tokens", "users", "posts", "images", "tasks", "operations"} <= set(tags)
    assert all(tags.values())


async def test_the_token_route_takes_the_form_swagger_sends(client: httpx.AsyncClient) -> None:
    account = await register(client)
    response = await client.post(
        "/api/token",
        data={"grant_type": "password", "username": account.username, "password": PASSWORD},
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"


@pytest.fixture
async def docs_off(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings.model_copy(update={"docs_enabled": False})) as (_, client):
        yield client


@pytest.mark.parametrize(
    "path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", f"{ASSETS_URL}/x.js"]
)
async def test_docs_enabled_false_removes_the_pages_and_the_schema(
    docs_off: httpx.AsyncClient, path: str
) -> None:
    response = await docs_off.get(path)
    assert response.status_code == 404
    assert (await docs_off.get("/health")).status_code == 200


async def test_every_asset_answers_a_conditional_request_with_304(
    client: httpx.AsyncClient,
) -> None:
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        first = await client.get(f"{ASSETS_URL}/{name}")
        etag = first.headers["etag"]
        again = await client.get(f"{ASSETS_URL}/{name}", headers={"If-None-Match": etag})
        assert again.status_code == 304, name
        assert not again.content


async def test_the_redoc_bundle_names_no_other_server(client: httpx.AsyncClient) -> None:
    bundle = (await client.get(f"{ASSETS_URL}/redoc.standalone.js")).text
    assert "cdn.redoc.ly" not in bundle


async def test_the_schema_and_pages_are_routes_the_metrics_name(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert (await client.get(path)).status_code == 200
    metrics = (await client.get("/metrics")).text
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert f'route="{path}"' in metrics, path
