"""Headless Chromium for the browser tests (Playwright's async API, Debian's Chromium)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, ViewportSize, async_playwright

from tests.conftest import ROOT

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FOUND = Path(CHROMIUM_PATH).is_file() and os.access(CHROMIUM_PATH, os.X_OK)
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No calls to Google: component updates, field trials, sync.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
# Generous: a busy 2-core CI machine runs the server, PostgreSQL, Redis and Chromium at once.
WAIT_MS = 20_000
NAVIGATION_MS = 30_000
LAUNCH_MS = 60_000


@asynccontextmanager
async def chromium(extra_args: Sequence[str] = ()) -> AsyncIterator[Browser]:
    """Headless Chromium, closed afterwards; screenshots go to `SCREENSHOTS`."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM_PATH,
            headless=True,
            args=[*CHROMIUM_ARGS, *extra_args],
            timeout=LAUNCH_MS,
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_context(browser: Browser) -> BrowserContext:
    """A fresh browser profile: empty cache and storage."""
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(NAVIGATION_MS)
    return context
