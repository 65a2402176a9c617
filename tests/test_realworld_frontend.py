"""A real RealWorld frontend in headless Chromium against `/conduit`, from another origin.

RealWorld frontends are published as source repositories, not as packages on a registry this
suite can install from, so this test runs only when `REALWORLD_FRONTEND_DIR` names a frontend
already built (a folder with its `index.html`, stylesheets and fonts beside it: the page may
load nothing from the internet) with its API URL set to `http://api.inkwell.test/conduit/api`.
It is skipped otherwise, with CI too. The README's picture of Conduit comes from this test
(`artifacts/screenshots/realworld.png`), taken with the Vue 3 frontend (see "Use a RealWorld
frontend" in the README).

The browser sees two origins: the frontend at `http://realworld.test`, its folder served on a
loopback port by the test, and Inkwell at `http://api.inkwell.test`, the live server; Chromium
resolves both names to their loopback ports.
So every API call is a real cross-origin request, preflights and `CORS_ORIGINS` included.
Pictures on other hosts (avatars) are answered with a small image; anything else is refused.

The test drives the pages by the RealWorld templates' placeholders and links: it signs up, sets
a picture and a bio, publishes an article with tags, favorites another author's article,
follows its author and comments on it, and finds all of it through Inkwell's own `/api` too.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page, Request, Route, expect

from app.config import Settings
from tests.browser import CHROMIUM_FOUND, CHROMIUM_PATH, SCREENSHOTS, WAIT_MS, chromium
from tests.browser import new_context as new_browser_context
from tests.conftest import settings_env, tidied_up_after
from tests.images import encode
from tests.live_server import LiveServer, apart_env, live_server
from tests.redis_server import RedisServer

FRONTEND_DIR = os.environ.get("REALWORLD_FRONTEND_DIR", "")
FRONTEND_HOST = "realworld.test"
FRONTEND = f"http://{FRONTEND_HOST}"
API_HOST = "api.inkwell.test"
PICTURES_HOST = "pictures.inkwell.test"
REQUEST_TIMEOUT_S = 20.0
PASSWORD = "correct horse battery"

expect.set_options(timeout=WAIT_MS)

pytestmark = [
    pytest.mark.skipif(
        not (FRONTEND_DIR and (Path(FRONTEND_DIR) / "index.html").is_file()),
        reason="REALWORLD_FRONTEND_DIR does not name a built RealWorld frontend (index.html)",
    ),
    pytest.mark.skipif(not CHROMIUM_FOUND, reason=f"Chromium not found at {CHROMIUM_PATH}"),
]

# (author, title, description, body, tags): what the home page shows before the test signs up.
ARTICLES = [
    (
        "ada",
        "Cursor pages that never skip a post",
        "Why offsets drift and signed cursors do not",
        "An offset counts rows; a cursor remembers where it stopped.",
        ["postgres", "api-design"],
    ),
    (
        "grace",
        "Image variants in a Celery worker",
        "Upload once, serve three sizes as WebP",
        "The API stores the original and queues a job; the worker does the rest.",
        ["celery", "images"],
    ),
    (
        "ada",
        "Revoking a JWT the moment it matters",
        "Short access tokens, refresh rotation and a Redis marker",
        "A revoked session is refused on the very next request, in every process.",
        ["security", "redis"],
    ),
]


@pytest.fixture(scope="module", autouse=True)
async def _tidy_up(settings: Settings, redis_server: RedisServer | None) -> AsyncIterator[None]:
    """The accounts and articles left here are gone before the next module starts."""
    async with tidied_up_after(settings, redis_server):
        yield


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    logs = tmp_path_factory.mktemp("realworld-frontend")
    env = settings_env(settings) | apart_env("frontend") | {"CORS_ORIGINS": FRONTEND}
    with live_server("realworld-frontend", env, logs / "api.log") as live:
        yield live


@pytest.fixture(scope="module")
async def api(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
async def authors(api: httpx.AsyncClient) -> dict[str, str]:
    """Two authors with pictures and the articles above, oldest first: name → token."""
    suffix = uuid.uuid4().hex[:6]
    tokens: dict[str, str] = {}
    for name in ("ada", "grace"):
        username = f"{name}_{suffix}"
        user = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        response = await api.post("/conduit/api/users", json={"user": user})
        assert response.status_code == 201, response.text
        tokens[name] = response.json()["user"]["token"]
        picture = {"image": f"https://{PICTURES_HOST}/{name}.png", "bio": f"{name} writes"}
        response = await api.put(
            "/conduit/api/user", json={"user": picture}, headers=_auth(tokens[name])
        )
        assert response.status_code == 200, response.text
    for author, title, description, body, tags in ARTICLES:
        article = {"title": title, "description": description, "body": body, "tagList": tags}
        response = await api.post(
            "/conduit/api/articles", json={"article": article}, headers=_auth(tokens[author])
        )
        assert response.status_code == 201, response.text
    return tokens


class _Frontend(SimpleHTTPRequestHandler):
    """Static files; a path that names no file is the app's own route (`serve --single`)."""

    def translate_path(self, path: str) -> str:
        found = super().translate_path(path)
        if not os.path.exists(found) and "." not in PurePosixPath(urlsplit(path).path).name:
            return os.path.join(FRONTEND_DIR, "index.html")
        return found

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def frontend() -> Iterator[int]:
    """The frontend's folder served on a loopback port, as `npx serve dist` would: its port."""
    handler = functools.partial(_Frontend, directory=FRONTEND_DIR)
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield httpd.server_address[1]
        finally:
            httpd.shutdown()
            thread.join()


@pytest.fixture(scope="module")
async def browser(server: LiveServer, frontend: int) -> AsyncIterator[Browser]:
    # Chromium resolves both host names to the loopback servers (ports included).
    rules = (
        f"--host-resolver-rules=MAP {FRONTEND_HOST}:80 127.0.0.1:{frontend},"
        f"MAP {API_HOST}:80 127.0.0.1:{server.port}"
    )
    async with chromium([rules]) as browser:
        yield browser


@pytest.fixture(scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await new_browser_context(browser)
    await context.route("**/*", _serve)
    try:
        yield context
    finally:
        await context.close()


async def _serve(route: Route, request: Request) -> None:
    """The frontend and the API over the network, pictures drawn here, nothing else."""
    parts = urlsplit(request.url)
    if parts.hostname in (FRONTEND_HOST, API_HOST):
        await route.continue_()
    elif request.resource_type == "image":
        await route.fulfill(status=200, body=_picture(parts.path), content_type="image/png")
    else:
        await route.abort()


def _picture(path: str) -> bytes:
    """A flat square whose colour depends on the path: each avatar looks its own."""
    seed = sum(path.encode())
    color = (90 + seed * 37 % 140, 90 + seed * 61 % 140, 90 + seed * 89 % 140)
    return encode(Image.new("RGB", (64, 64), color), "PNG")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


async def _page(context: BrowserContext) -> tuple[Page, list[str]]:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "requestfailed",
        # A request the page itself cancelled (it navigated on) is not a failure.
        lambda r: (
            errors.append(f"{r.method} {r.url}: {r.failure}")
            if r.failure != "net::ERR_ABORTED"
            else None
        ),
    )
    page.on(
        "console",
        lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None,
    )
    page.on(
        "response",
        lambda response: (
            errors.append(f"{response.status} {response.url}")
            if response.status >= 400 and urlsplit(response.url).hostname == API_HOST
            else None
        ),
    )
    return page, errors


async def test_a_reader_signs_up_publishes_favorites_and_follows(
    context: BrowserContext, api: httpx.AsyncClient, authors: dict[str, str]
) -> None:
    page, errors = await _page(context)
    try:
        await page.goto(f"{FRONTEND}/")
        for _, title, *_ in ARTICLES:
            await expect(page.get_by_text(title)).to_be_visible()
        await expect(page.locator(".sidebar .tag-list, .sidebar .tag-pill").first).to_be_visible()
        await expect(page.locator(".sidebar").get_by_text("postgres")).to_be_visible()

        username = f"reader_{uuid.uuid4().hex[:6]}"
        await page.get_by_role("link", name=re.compile("sign up", re.I)).first.click()
        await page.locator('input[placeholder="Username"], input[placeholder="Your Name"]').fill(
            username
        )
        await page.get_by_placeholder("Email").fill(f"{username}@example.com")
        await page.get_by_placeholder("Password").fill(PASSWORD)
        await page.get_by_role("button", name=re.compile("sign up", re.I)).click()
        await expect(page.locator("nav").get_by_text(username)).to_be_visible()

        # Settings: a picture and a bio, through PUT /user.
        await page.get_by_role("link", name=re.compile("settings", re.I)).click()
        await page.get_by_placeholder("URL of profile picture").fill(
            f"https://{PICTURES_HOST}/{username}.png"
        )
        await page.get_by_placeholder("Short bio about you").fill("Reads Inkwell through Conduit")
        await page.get_by_role("button", name=re.compile("update settings", re.I)).click()
        await expect(page.get_by_text("Reads Inkwell through Conduit")).to_be_visible()
        me = await api.get(f"/api/profiles/{username}")
        assert me.status_code == 200, me.text
        assert me.json()["bio"] == "Reads Inkwell through Conduit"

        await page.get_by_role("link", name=re.compile("new (article|post)", re.I)).click()
        title = "Conduit on Inkwell"
        await page.get_by_placeholder("Article Title").fill(title)
        await page.get_by_placeholder("What's this article about?").fill("Any RealWorld frontend")
        await page.get_by_placeholder(re.compile("Write your article")).fill(
            "Served by the **same** services and data as `/api`."
        )
        tags = page.get_by_placeholder("Enter tags")
        for tag in ("realworld", "fastapi"):
            await tags.fill(tag)
            await tags.press("Enter")
        await page.get_by_role("button", name=re.compile("publish", re.I)).click()
        await expect(page.locator("h1").get_by_text(title)).to_be_visible()
        await expect(page.locator(".article-content strong")).to_have_text("same")

        # Inkwell's own API has it: an article is a post.
        listed = await api.get("/api/posts", params={"author": username})
        assert listed.status_code == 200, listed.text
        [post] = listed.json()["items"]
        assert (post["title"], sorted(post["tags"])) == (title, ["fastapi", "realworld"])

        # Favorite Grace's article from the home page's global feed, then follow her.
        await (
            page.locator("nav").get_by_role("link", name=re.compile("^\\s*home\\s*$", re.I)).click()
        )
        await page.get_by_text(re.compile("global feed", re.I)).click()
        grace_title = ARTICLES[1][1]
        preview = page.locator(".article-preview").filter(has_text=grace_title)
        await preview.locator("button").click()
        await expect(preview.locator("button")).to_contain_text("1")
        await preview.get_by_text(grace_title).click()
        await page.get_by_role("button", name=re.compile("follow", re.I)).first.click()
        await expect(
            page.get_by_role("button", name=re.compile("unfollow", re.I)).first
        ).to_be_visible()
        # ... and comment on it.
        await page.get_by_placeholder("Write a comment...").fill("Which sizes does it keep?")
        await page.locator("button", has_text=re.compile("post comment", re.I)).click()
        await expect(page.locator(".card .card-text")).to_have_text("Which sizes does it keep?")

        grace = (await api.get("/conduit/api/user", headers=_auth(authors["grace"]))).json()
        by_grace = await api.get("/api/posts", params={"author": grace["user"]["username"]})
        [post_id] = [p["id"] for p in by_grace.json()["items"] if p["title"] == grace_title]
        comments = (await api.get(f"/api/posts/{post_id}/comments")).json()["items"]
        assert [(c["author"]["username"], c["body"]) for c in comments] == [
            (username, "Which sizes does it keep?")
        ]
        profile = await api.get(f"/api/profiles/{grace['user']['username']}")
        assert profile.status_code == 200, profile.text
        assert profile.json()["followers"] == 1
        liked = await api.get("/api/posts", params={"favorited_by": username})
        assert [p["title"] for p in liked.json()["items"]] == [grace_title]
        login = {"user": {"email": f"{username}@example.com", "password": PASSWORD}}
        token = (await api.post("/conduit/api/users/login", json=login)).json()["user"]["token"]
        listed = await api.get("/conduit/api/articles", headers=_auth(token))
        favorited = [a["title"] for a in listed.json()["articles"] if a["favorited"]]
        assert favorited == [grace_title]

        # The README's picture: the global feed with the new article on top.
        await (
            page.locator("nav").get_by_role("link", name=re.compile("^\\s*home\\s*$", re.I)).click()
        )
        await page.get_by_text(re.compile("global feed", re.I)).click()
        await expect(page.locator(".article-preview").first).to_contain_text(title)
        await page.screenshot(path=SCREENSHOTS / "realworld.png")
        assert not errors, f"the frontend met errors: {errors}"
    except Exception:
        await page.screenshot(path=SCREENSHOTS / "failed-realworld.png", full_page=True)
        raise
    finally:
        await page.close()
