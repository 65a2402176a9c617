"""The links in e-mails work: they point at the address the API is served on (or at
`FRONTEND_URL`), and `/verify-email` and `/reset-password` are pages a user finishes on — plain
forms, no script, headers that keep the token in their URL to themselves."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import Iterator
from email.message import EmailMessage
from html import escape
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

import app.cli.commands as cli_module
from app.config import Settings, get_settings
from app.models import User
from tests.conftest import running_app, settings_env, settings_like
from tests.factories import PASSWORD, register
from tests.live_server import live_server
from tests.services import SmtpServer, text_body
from tests.test_delivery import BASE, Compose, compose_command, environment, services

MAIL_TIMEOUT_S = 30.0
NEW_PASSWORD = "a brand new passphrase"
LINK = re.compile(r"(https?://[^\s\"<>]+)/(verify-email|reset-password)\?token=([A-Za-z0-9_\-]+)")
PAGE_HEADERS = {
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
    "pragma": "no-cache",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "x-robots-tag": "noindex",
}


# --- helpers ------------------------------------------------------------------------------------


async def mail_link(smtp: SmtpServer, to: str, page: str, count: int = 1) -> tuple[str, str]:
    """The base URL and token of the newest `page` link mailed to `to`."""
    found: list[EmailMessage] = await asyncio.to_thread(smtp.wait_for, to, MAIL_TIMEOUT_S, count)
    links = [m for m in (LINK.search(text_body(message)) for message in found) if m]
    matching = [m for m in links if m.group(2) == page]
    assert matching, f"no {page} link in {len(found)} e-mail(s) to {to}"
    return matching[-1].group(1), matching[-1].group(3)


def assert_safe_page(response: httpx.Response) -> str:
    """An HTML page with the protective headers, no script and nothing loaded from elsewhere;
    its one inline style is allowed by the CSP's hash and nothing else is."""
    assert response.headers["content-type"].startswith("text/html"), response.headers
    for name, value in PAGE_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "script-src" not in directives  # default-src 'none': no script at all
    html = response.text
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    hashes = {base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in styles}
    assert directives["style-src"] == " ".join(f"'sha256-{h}'" for h in sorted(hashes))
    assert "<script" not in html.lower()
    assert not re.search(r"(src|href)=", html), "the page loads nothing"
    assert not re.search(r"style=", html), "no inline style attributes (the CSP refuses them)"
    return html


def form_of(html: str) -> tuple[str, dict[str, str]]:
    """The form's action and its hidden fields."""
    action = re.search(r'<form method="post" action="([^"]+)"', html)
    assert action is not None, html
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))
    return action.group(1), hidden


async def is_verified(db: AsyncSession, user_id: int) -> bool:
    verified = await db.scalar(select(User.is_verified).where(User.id == user_id))
    await db.rollback()  # no transaction left open (SQLite locks)
    return bool(verified)


# --- settings: where links point ----------------------------------------------------------------


def test_public_url_defaults_to_the_address_served() -> None:
    assert Settings(port=9000).public_url == "http://127.0.0.1:9000"
    assert Settings(host="0.0.0.0", port=8123).public_url == "http://127.0.0.1:8123"  # noqa: S104
    assert Settings(host="::", port=8123).public_url == "http://[::1]:8123"
    assert Settings(host="api.internal", port=80).public_url == "http://api.internal:80"
    assert Settings(public_url="", port=9001).public_url == "http://127.0.0.1:9001"


def test_public_and_frontend_urls_set_the_link_base() -> None:
    explicit = Settings(public_url="https://api.example.com/inkwell/", port=9000)
    assert explicit.public_url == "https://api.example.com/inkwell"
    assert explicit.email_link_base == "https://api.example.com/inkwell"
    frontend = Settings(public_url="https://api.example.com", frontend_url="https://example.com/")
    assert frontend.email_link_base == "https://example.com"


@pytest.mark.parametrize(
    "value", ["javascript:alert(1)", "example.com", "ftp://example.com", "https://x.io/?a=1", "//x"]
)
@pytest.mark.parametrize("name", ["public_url", "frontend_url"])
def test_link_bases_must_be_plain_http_urls(name: str, value: str) -> None:
    with pytest.raises(ValidationError, match="URL"):
        Settings.model_validate({name: value})


def test_production_without_public_url_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s" * 48
    caplog.set_level(logging.WARNING, logger="app.config")
    Settings(environment="production", jwt_secret_key=secret).warn_about_production_gaps()
    assert "PUBLIC_URL is not set" in caplog.text
    caplog.clear()
    for explicit in ({"public_url": "https://api.example.com"}, {"frontend_url": "https://x.io"}):
        production = {"environment": "production", "jwt_secret_key": secret}
        settings = Settings.model_validate(production | explicit)
        settings.warn_about_production_gaps()
    assert "PUBLIC_URL" not in caplog.text


@pytest.fixture
def clean_process_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("HOST", "PORT", "PUBLIC_URL"):
        monkeypatch.setenv(name, "")  # restored (removed) afterwards
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("clean_process_settings")
def test_run_serves_and_links_on_the_port_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}

    def fake_uvicorn_run(target: str, **options: Any) -> None:
        # What the app factory reads, in this process or in each worker process.
        served.update(options, settings=get_settings())

    monkeypatch.setattr("uvicorn.run", fake_uvicorn_run)
    monkeypatch.setattr("app.core.logging.configure_logging", lambda **_: None)
    result = CliRunner().invoke(cli_module.cli, ["run", "--port", "9137"])
    assert result.exit_code == 0, result.output
    assert served["port"] == 9137
    assert served["settings"].port == 9137
    assert served["settings"].email_link_base == "http://127.0.0.1:9137"


# --- the pages, in process -----------------------------------------------------------------------


async def test_verification_page_verifies_only_when_the_button_is_pressed(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account = await register(client)
    base, token = await mail_link(smtp_server, account.email, "verify-email")
    assert base == settings.public_url

    # A link previewer fetching the page (twice) spends nothing.
    for _ in range(2):
        page = await client.get("/verify-email", params={"token": token})
        assert page.status_code == 200, page.text
    html = assert_safe_page(page)
    assert not await is_verified(db, account.id)
    action, hidden = form_of(html)
    assert action == "verify-email"  # relative: works under any PUBLIC_URL path
    assert hidden == {"token": token}

    done = await client.post("/verify-email", data=hidden)
    assert done.status_code == 200, done.text
    assert "confirmed" in assert_safe_page(done)
    assert await is_verified(db, account.id)

    again = await client.post("/verify-email", data=hidden)
    assert again.status_code == 400
    assert "Invalid or expired link" in assert_safe_page(again)


async def test_reset_page_sets_a_new_password_and_ends_every_session(
    client: httpx.AsyncClient, smtp_server: SmtpServer
) -> None:
    account = await register(client)
    assert (await client.post("/api/password-reset", json={"email": account.email})).status_code
    _, token = await mail_link(smtp_server, account.email, "reset-password", count=2)

    page = await client.get("/reset-password", params={"token": token})
    assert page.status_code == 200
    html = assert_safe_page(page)
    action, hidden = form_of(html)
    assert action == "reset-password"
    assert hidden == {"token": token}
    assert 'name="new_password" type="password" autocomplete="new-password"' in html

    done = await client.post(
        "/reset-password",
        data={**hidden, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
    )
    assert done.status_code == 200, done.text
    assert "Password changed" in assert_safe_page(done)
    # Every session ended; the new password logs in, the old one does not.
    assert (await client.get("/api/users/me", headers=account.headers)).status_code == 401
    new_login = {"username": account.username, "password": NEW_PASSWORD}
    assert (await client.post("/api/token", json=new_login)).status_code == 200
    old_login = {"username": account.username, "password": PASSWORD}
    assert (await client.post("/api/token", json=old_login)).status_code == 401

    reused = await client.post(
        "/reset-password",
        data={**hidden, "new_password": "yet another one", "confirm_password": "yet another one"},
    )
    assert reused.status_code == 400
    assert_safe_page(reused)


@pytest.mark.parametrize(
    ("new_password", "confirm_password", "says"),
    [
        ("short", "short", "at least 8 characters"),
        ("x" * 129, "x" * 129, "at most 128 characters"),
        (NEW_PASSWORD, NEW_PASSWORD + "!", "The two passwords differ."),
        ("", "", "at least 8 characters"),
    ],
)
async def test_reset_page_explains_a_refused_password_and_keeps_the_link(
    client: httpx.AsyncClient,
    smtp_server: SmtpServer,
    new_password: str,
    confirm_password: str,
    says: str,
) -> None:
    account = await register(client)
    await client.post("/api/password-reset", json={"email": account.email})
    _, token = await mail_link(smtp_server, account.email, "reset-password", count=2)

    refused = await client.post(
        "/reset-password",
        data={"token": token, "new_password": new_password, "confirm_password": confirm_password},
    )
    assert refused.status_code == 422
    html = assert_safe_page(refused)
    assert says in html
    assert new_password not in html or not new_password  # a password is never echoed back
    assert form_of(html)[1] == {"token": token}
    # The link still works.
    done = await client.post(
        "/reset-password",
        data={"token": token, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
    )
    assert done.status_code == 200, done.text


@pytest.mark.parametrize("page", ["/verify-email", "/reset-password"])
@pytest.mark.parametrize("query", [{}, {"token": ""}, {"token": "x" * 513}])
async def test_a_link_without_a_usable_token_says_so(
    client: httpx.AsyncClient, page: str, query: dict[str, str]
) -> None:
    response = await client.get(page, params=query)
    assert response.status_code == 400
    assert "incomplete or damaged" in assert_safe_page(response)
    posted = await client.post(page, data=query)
    assert posted.status_code == 400
    assert_safe_page(posted)


@pytest.mark.parametrize("page", ["/verify-email", "/reset-password"])
async def test_a_token_is_escaped_in_the_page(client: httpx.AsyncClient, page: str) -> None:
    hostile = '"><script>alert(1)</script><input value="'
    response = await client.get(page, params={"token": hostile})
    html = assert_safe_page(response)
    assert f'value="{escape(hostile)}"' in html
    unknown = await client.post(
        page,
        data={"token": hostile, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
    )
    assert unknown.status_code == 400
    assert_safe_page(unknown)


async def test_pages_are_not_part_of_the_api_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/verify-email" not in paths
    assert "/reset-password" not in paths


async def test_frontend_url_takes_the_links(
    app: FastAPI, settings: Settings, smtp_server: SmtpServer
) -> None:
    frontend = "https://app.example.com/account"
    async with running_app(settings_like(settings, frontend_url=frontend)) as (_, other):
        account = await register(other)
        base, _ = await mail_link(smtp_server, account.email, "verify-email")
        assert base == frontend
        await other.post("/api/password-reset", json={"email": account.email})
        base, _ = await mail_link(smtp_server, account.email, "reset-password", count=2)
        assert base == frontend


# --- a real server on a port of its own ----------------------------------------------------------


async def test_links_follow_the_port_served_and_their_pages_finish_the_job(
    app: FastAPI, settings: Settings, smtp_server: SmtpServer, db: AsyncSession, tmp_path: Path
) -> None:
    """`python -m app run --port N` without PUBLIC_URL: the e-mails link to port N, and a user
    following them there verifies the address and sets a new password."""
    env = {**settings_env(settings), "PUBLIC_URL": ""}
    with live_server("links", env, tmp_path / "api.log") as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as browser:
            account = await register(browser)
            base, token = await mail_link(smtp_server, account.email, "verify-email")
            assert base == live.url
            page = await browser.get(f"{base}/verify-email", params={"token": token})
            action, hidden = form_of(assert_safe_page(page))
            done = await browser.post(str(page.url.join(action)), data=hidden)
            assert done.status_code == 200, done.text
            assert await is_verified(db, account.id)

            await browser.post("/api/password-reset", json={"email": account.email})
            base, token = await mail_link(smtp_server, account.email, "reset-password", count=2)
            assert base == live.url
            page = await browser.get(f"{base}/reset-password", params={"token": token})
            action, hidden = form_of(assert_safe_page(page))
            fields = {**hidden, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
            done = await browser.post(str(page.url.join(action)), data=fields)
            assert done.status_code == 200, done.text
            login = {"username": account.username, "password": NEW_PASSWORD}
            assert (await browser.post("/api/token", json=login)).status_code == 200


@pytest.mark.parametrize(
    ("variables", "public_url"),
    [
        ({}, "http://localhost:8000"),
        ({"API_PORT": "9100", "PUBLIC_URL": "http://localhost:9100"}, "http://localhost:9100"),
    ],
)
def test_compose_links_point_at_the_published_api(
    tmp_path: Path, variables: dict[str, str], public_url: str
) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    config = Compose(compose_command(), env_file).config((BASE,), (), variables)
    for name in ("api", "worker"):
        assert environment(services(config)[name])["PUBLIC_URL"] == public_url
