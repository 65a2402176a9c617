"""The API documentation in a real browser: headless Chromium against `python -m app run`.

Swagger UI at `/docs` and ReDoc at `/redoc` render from Inkwell's own assets (no request leaves
the server), Swagger's Authorize logs in through `/api/token` and survives a reload, and "Try it
out" creates a post (201) and uploads an image to it (202). Screenshots go to
`artifacts/screenshots/` (`failed-*.png` when a check fails); `docs.png` there is the README's
picture.

Playwright's async API runs on the suite's session event loop: the sync API leaves its own loop
marked as running between calls, and the suite's async fixtures then refuse to run.
Skipped when Chromium is missing, unless CI is set: CI installs it, so there a missing browser
fails the run.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    FloatRect,
    Locator,
    Page,
    Request,
    Response,
    expect,
)

from app.config import Settings
from app.web.docs import ASSETS_URL
from tests.browser import CHROMIUM_FOUND, CHROMIUM_PATH, SCREENSHOTS, WAIT_MS, chromium, new_context
from tests.conftest import ON_CI, settings_env, tidied_up_after
from tests.factories import PASSWORD
from tests.images import tiny_png
from tests.live_server import LiveServer, apart_env, live_server
from tests.redis_server import RedisServer

REQUEST_TIMEOUT_S = 20.0
# Swagger UI's Authorize buttons are "locked" once the scheme is authorized, "unlocked" before.
LOCKED = re.compile(r"(^|\s)locked(\s|$)")
UNLOCKED = re.compile(r"(^|\s)unlocked(\s|$)")
IS_OPEN = re.compile(r"(^|\s)is-open(\s|$)")
OAUTH2_SCHEME = "OAuth2PasswordBearer"

# Every expect() waits as long as the other waits (its own default is 5 s).
expect.set_options(timeout=WAIT_MS)

pytestmark = pytest.mark.skipif(
    not CHROMIUM_FOUND and not ON_CI,
    reason=f"Chromium not found at {CHROMIUM_PATH} (set CHROMIUM_PATH; with CI=true this fails)",
)


@dataclass
class Watch:
    """Everything a page asked for and complained about while a test looked at it."""

    origin: str
    requests: list[str] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("request", self._on_request)
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_failed)
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)

    def _on_request(self, request: Request) -> None:
        self.requests.append(request.url)

    def _on_response(self, response: Response) -> None:
        self.responses.append(response)

    def _on_failed(self, request: Request) -> None:
        self.failed.append(f"{request.method} {request.url}: {request.failure}")

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} (at {message.location['url']})")

    def _on_page_error(self, error: Error) -> None:
        self.page_errors.append(str(error))

    def assert_clean(self) -> None:
        """Every request went to the server itself and none failed, the page logged no error,
        and every page, script, stylesheet and schema loaded (API answers are the tests')."""
        assert self.requests, "the page made no request at all"
        elsewhere = [url for url in self.requests if not self._local(url)]
        assert not elsewhere, f"requests left {self.origin}: {elsewhere}"
        assert not self.failed, f"requests failed: {self.failed}"
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        assert not self.console_errors, f"console errors: {self.console_errors}"
        broken = [
            f"{r.status} {r.url}"
            for r in self.responses
            if r.status >= 400 and not urlsplit(r.url).path.startswith("/api/")
        ]
        assert not broken, f"documentation responses in error: {broken}"

    def _local(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob"):  # made inside the page: nothing on the network
            return True
        return f"{parts.scheme}://{parts.netloc}" == self.origin


@dataclass
class Account:
    username: str
    password: str
    access_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class Shared:
    """What one test leaves for the next: the post created through Swagger UI."""

    post_id: int | None = None


@pytest.fixture(scope="module", autouse=True)
async def _tidy_up(settings: Settings, redis_server: RedisServer | None) -> AsyncIterator[None]:
    """The rows these tests leave are gone before the next module's tests start."""
    async with tidied_up_after(settings, redis_server):
        yield


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    logs = tmp_path_factory.mktemp("docs-browser")
    env = settings_env(settings) | apart_env("docs")
    with live_server("docs", env, logs / "api.log") as live:
        yield live


@pytest.fixture(scope="module")
async def api(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
async def account(api: httpx.AsyncClient) -> Account:
    """A user of its own: the suite's per-test clean-up does not run for these tests."""
    username = f"docs_{uuid.uuid4().hex[:12]}"
    response = await api.post(
        "/api/users",
        json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
    )
    assert response.status_code == 201, response.text
    return Account(username, PASSWORD, response.json()["tokens"]["access_token"])


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM_FOUND:
        pytest.fail(f"Chromium not found at {CHROMIUM_PATH}: with CI=true the browser tests run")
    async with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """The profile the Swagger UI tests share: Swagger keeps the authorization in it."""
    context = await new_context(browser)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture(scope="module")
def shared() -> Shared:
    return Shared()


async def open_page(context: BrowserContext, url: str) -> tuple[Page, Watch]:
    page = await context.new_page()
    parts = urlsplit(url)
    watch = Watch(f"{parts.scheme}://{parts.netloc}")
    watch.attach(page)
    await page.goto(url)
    return page, watch


@contextlib.asynccontextmanager
async def screenshot_on_failure(page: Page, name: str) -> AsyncIterator[None]:
    """Keeps what the browser showed when a check failed, for the CI artifacts."""
    try:
        yield
    except Exception:
        with contextlib.suppress(Error):
            await page.screenshot(path=SCREENSHOTS / f"failed-{name}.png", full_page=True)
        raise


async def wait_for_swagger(page: Page) -> None:
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Inkwell")
    await expect(page.locator(".swagger-ui .opblock").first).to_be_visible()


def authorize_button(page: Page) -> Locator:
    return page.locator(".swagger-ui .auth-wrapper button.authorize")


def logout_button(modal: Locator) -> Locator:
    return modal.locator("button.modal-btn", has_text="Logout")


async def try_it_out(operation: Locator) -> None:
    """`tryItOutEnabled` opens the form already; click "Try it out" only if it is offered."""
    button = operation.locator("button.try-out__btn:not(.reset)")
    await expect(button).to_be_visible()
    if (await button.inner_text()).strip() == "Try it out":
        await button.click()
    await expect(button).to_have_text(re.compile(r"^\s*Cancel\s*$"))


async def execute(page: Page, operation: Locator, method: str, path: str) -> Response:
    """Clicks Execute; returns the API's answer once Swagger UI shows its status code."""

    def is_call(response: Response) -> bool:
        return response.request.method == method and urlsplit(response.url).path == path

    async with page.expect_response(is_call) as answer:
        await operation.locator("button.execute").click()
    response = await answer.value
    status = operation.locator(".live-responses-table .response .response-col_status")
    await expect(status).to_have_text(str(response.status))
    return response


async def screenshot_call(page: Page, operation: Locator, name: str) -> None:
    """The operation from its header down to the server's response (not the documented
    responses below it)."""
    live = operation.locator(".live-responses-table")
    await live.scroll_into_view_if_needed()
    top = await operation.evaluate("e => e.getBoundingClientRect().top + window.scrollY")
    left = await operation.evaluate("e => e.getBoundingClientRect().left + window.scrollX")
    width = await operation.evaluate("e => e.getBoundingClientRect().width")
    bottom = await live.evaluate("e => e.getBoundingClientRect().bottom + window.scrollY")
    clip: FloatRect = {"x": left, "y": top, "width": width, "height": bottom - top + 12}
    await page.screenshot(path=SCREENSHOTS / name, full_page=True, clip=clip)


async def stored_access_token(page: Page) -> str:
    """The access token Swagger UI keeps for the OAuth2 scheme (persistAuthorization)."""
    stored = await page.evaluate("() => window.localStorage.getItem('authorized')")
    assert isinstance(stored, str), "Swagger UI stored no authorization"
    schemes: dict[str, Any] = json.loads(stored)
    token = schemes[OAUTH2_SCHEME]["token"]["access_token"]
    assert isinstance(token, str)
    return token


async def test_docs_render_from_the_server_itself(browser: Browser, server: LiveServer) -> None:
    context = await new_context(browser)  # a cold cache: every asset is fetched
    try:
        page, watch = await open_page(context, f"{server.url}/docs")
        async with screenshot_on_failure(page, "docs"):
            await wait_for_swagger(page)
            assert await page.title() == "Inkwell API"
            posts = page.locator(".swagger-ui .opblock-tag-section").filter(
                has=page.locator("h3#operations-tag-posts")
            )
            await expect(posts.locator("#operations-posts-posts-create")).to_be_visible()
            assert await posts.locator(".opblock").count() >= 6  # create, list, read, put...
            await page.wait_for_load_state("networkidle")
            watch.assert_clean()

            assets = [r for r in watch.responses if urlsplit(r.url).path.startswith(ASSETS_URL)]
            fetched = {urlsplit(r.url).path.rsplit("/", 1)[-1] for r in assets}
            assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= fetched, fetched
            for response in assets:
                cache_control = await response.header_value("cache-control") or ""
                assert "immutable" in cache_control, f"{response.url}: {cache_control!r}"
                assert "max-age=31536000" in cache_control, f"{response.url}: {cache_control!r}"
            document = next(r for r in watch.responses if urlsplit(r.url).path == "/docs")
            assert await document.header_value("cache-control") == "no-cache"

            # The README's picture: the title, Authorize, and the posts operations.
            tag_filter = page.locator(".swagger-ui input.operation-filter-input")
            await tag_filter.fill("posts")
            await expect(page.locator(".swagger-ui .opblock-tag-section")).to_have_count(1)
            await tag_filter.blur()
            await page.screenshot(path=SCREENSHOTS / "docs.png")
    finally:
        await context.close()


async def test_every_operation_opens_without_errors(browser: Browser, server: LiveServer) -> None:
    """Opening an operation makes Swagger UI resolve its schemas: a `$ref` to a schema the
    document lacks shows as a resolver error (until another operation is opened, so each is
    checked on its own). The same dangling `$ref` stops ReDoc altogether."""
    context = await new_context(browser)
    try:
        page, watch = await open_page(context, f"{server.url}/docs")
        async with screenshot_on_failure(page, "docs-operations"):
            await wait_for_swagger(page)
            operations = page.locator(".swagger-ui .opblock")
            count = await operations.count()
            assert count >= 30, f"only {count} operations"
            problems: dict[str, Any] = {}
            for index in range(count):
                operation = operations.nth(index)
                summary = operation.locator(".opblock-summary-control")
                path = await operation.locator(".opblock-summary-path").get_attribute("data-path")
                method = (await operation.locator(".opblock-summary-method").inner_text()).lower()
                await summary.click()
                await expect(operation.locator(".responses-wrapper")).to_be_visible()
                await page.wait_for_function(
                    "key => ui.specSelectors.specResolvedSubtree(key) !== undefined",
                    arg=["paths", path, method],
                )
                errors = await page.evaluate("() => ui.errSelectors.allErrors().toJS()")
                if errors:
                    problems[f"{method.upper()} {path}"] = errors
                await summary.click()
                await expect(operation).not_to_have_class(IS_OPEN)
            assert not problems, f"Swagger UI errors: {problems}"
            watch.assert_clean()
    finally:
        await context.close()


async def test_authorize_logs_in_and_survives_a_reload(
    context: BrowserContext, server: LiveServer, account: Account
) -> None:
    page, watch = await open_page(context, f"{server.url}/docs")
    async with screenshot_on_failure(page, "docs-authorize"):
        await wait_for_swagger(page)
        button = authorize_button(page)
        await expect(button).to_have_class(UNLOCKED)

        await button.click()
        modal = page.locator(".swagger-ui .dialog-ux .modal-ux")
        await expect(modal).to_be_visible()
        await expect(modal).to_contain_text(f"{OAUTH2_SCHEME} (OAuth2, password)")
        await modal.locator("#oauth_username").fill(account.username)
        await modal.locator("#oauth_password").fill(account.password)
        async with page.expect_response(lambda r: urlsplit(r.url).path == "/api/token") as answer:
            await modal.locator("button.modal-btn.authorize", has_text="Authorize").click()
        token_response = await answer.value
        assert token_response.status == 200, await token_response.text()
        sent = token_response.request
        assert sent.method == "POST"
        content_type = await sent.header_value("content-type") or ""
        assert content_type.startswith("application/x-www-form-urlencoded"), content_type
        assert "grant_type=password" in (sent.post_data or "")
        await expect(logout_button(modal)).to_be_visible()
        await expect(modal).to_contain_text("Authorized")
        await page.screenshot(path=SCREENSHOTS / "docs-authorized.png")

        await modal.locator("button.modal-btn.btn-done").click()
        await expect(modal).to_be_hidden()
        await expect(button).to_have_class(LOCKED)
        token = await stored_access_token(page)
        me = await page.request.get(
            f"{server.url}/api/users/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert me.status == 200, await me.text()
        assert (await me.json())["username"] == account.username

        # persistAuthorization: the token is kept in the browser and still used after a reload.
        await page.reload()
        await wait_for_swagger(page)
        await expect(button).to_have_class(LOCKED)
        await button.click()
        await expect(logout_button(modal)).to_be_visible()
        await modal.locator("button.modal-btn.btn-done").click()
        await expect(modal).to_be_hidden()
        watch.assert_clean()
    await page.close()


async def test_try_it_out_creates_a_post(
    context: BrowserContext,
    server: LiveServer,
    api: httpx.AsyncClient,
    account: Account,
    shared: Shared,
) -> None:
    page, watch = await open_page(context, f"{server.url}/docs#/posts/posts-create")
    async with screenshot_on_failure(page, "docs-post-create"):
        await wait_for_swagger(page)
        await expect(authorize_button(page)).to_have_class(LOCKED)  # from the test before
        operation = page.locator("#operations-posts-posts-create")
        await expect(operation).to_have_class(IS_OPEN)  # the deep link opened it
        await try_it_out(operation)

        marker = uuid.uuid4().hex
        title = f"Written in Swagger UI {marker}"
        post = {"title": title, "content": "Posted with *Try it out*.", "tags": ["docs"]}
        await operation.locator("textarea.body-param__text").fill(json.dumps(post, indent=2))
        response = await execute(page, operation, "POST", "/api/posts")
        assert response.status == 201, await response.text()
        authorization = await response.request.header_value("authorization")
        assert authorization == f"Bearer {await stored_access_token(page)}"
        created: dict[str, Any] = await response.json()
        assert created["title"] == title
        assert created["author"]["username"] == account.username
        await screenshot_call(page, operation, "docs-post-created-201.png")
        watch.assert_clean()
    await page.close()

    found = await api.get("/api/posts", params={"q": marker})
    assert found.status_code == 200, found.text
    listed = found.json()
    assert listed["total"] == 1, listed
    assert listed["items"][0]["id"] == created["id"]
    assert listed["items"][0]["tags"] == ["docs"]
    shared.post_id = created["id"]


async def test_try_it_out_uploads_an_image(
    context: BrowserContext,
    server: LiveServer,
    api: httpx.AsyncClient,
    account: Account,
    shared: Shared,
    tmp_path: Path,
) -> None:
    assert shared.post_id is not None, "needs the post test_try_it_out_creates_a_post made"
    picture = tmp_path / "green.png"
    picture.write_bytes(tiny_png())

    page, watch = await open_page(context, f"{server.url}/docs#/images/images-upload")
    async with screenshot_on_failure(page, "docs-image-upload"):
        await wait_for_swagger(page)
        operation = page.locator("#operations-images-images-upload")
        await expect(operation).to_have_class(IS_OPEN)
        await try_it_out(operation)
        await operation.locator('tr[data-param-name="post_id"] input').fill(str(shared.post_id))
        file_input = operation.locator("input[type=file]")
        await expect(file_input).to_have_count(1)
        await file_input.set_input_files(picture)
        alt = operation.locator(".opblock-section-request-body input[type=text]")
        await expect(alt).to_have_count(1)
        await alt.fill("A green square")

        response = await execute(page, operation, "POST", f"/api/posts/{shared.post_id}/images")
        assert response.status == 202, await response.text()
        image: dict[str, Any] = await response.json()
        assert image["status"] == "pending", image
        assert image["alt"] == "A green square", image
        assert (image["width"], image["height"]) == (16, 16), image
        await screenshot_call(page, operation, "docs-image-uploaded-202.png")
        watch.assert_clean()
    await page.close()

    stored = await api.get(
        f"/api/posts/{shared.post_id}/images/{image['id']}", headers=account.headers
    )
    assert stored.status_code == 200, stored.text


async def test_redoc_renders_from_the_server_itself(browser: Browser, server: LiveServer) -> None:
    context = await new_context(browser)
    try:
        page, watch = await open_page(context, f"{server.url}/redoc")
        async with screenshot_on_failure(page, "redoc"):
            await expect(page.get_by_role("heading", name=re.compile(r"^Inkwell"))).to_be_visible()
            await expect(page.get_by_role("heading", name="Create a post")).to_be_visible()
            assert await page.title() == "Inkwell API reference"
            await page.wait_for_load_state("networkidle")
            await page.screenshot(path=SCREENSHOTS / "redoc.png")
            watch.assert_clean()
            assets = [r for r in watch.responses if urlsplit(r.url).path.startswith(ASSETS_URL)]
            assert any(r.url.endswith("/redoc.standalone.js") for r in assets), watch.requests
            for response in assets:
                cache_control = await response.header_value("cache-control") or ""
                assert "immutable" in cache_control, f"{response.url}: {cache_control!r}"
    finally:
        await context.close()
