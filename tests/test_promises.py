"""Promises README's Security section makes, checked against the literal values it names (not
against the app's own constants, so a header dropped from them makes these fail)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

# README, Security, Headers: what the pages the e-mail links open send, so that the token in
# their URL goes nowhere.
PROMISED_PAGE_HEADERS = {
    "cache-control": "no-store",
    "pragma": "no-cache",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


@pytest.mark.parametrize("path", ["/verify-email", "/reset-password"])
async def test_the_e_mail_link_pages_send_the_promised_headers(
    client: httpx.AsyncClient, path: str
) -> None:
    for response in (
        await client.get(path, params={"token": "not-a-token"}),
        await client.get(path),
    ):
        assert response.headers["content-type"].startswith("text/html"), response.headers
        for name, value in PROMISED_PAGE_HEADERS.items():
            assert response.headers.get(name) == value, (path, name, response.headers)
        csp = dict(
            d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";")
        )
        assert csp["default-src"] == "'none'"
        assert csp["form-action"] == "'self'"
        assert csp["frame-ancestors"] == "'none'"


def test_openapi_says_a_new_email_needs_the_current_password(app: FastAPI) -> None:
    schema = app.openapi()
    body = schema["paths"]["/api/users/me"]["patch"]["requestBody"]["content"]
    ref = body["application/json"]["schema"]["$ref"]
    declared = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert declared["dependentRequired"] == {"email": ["current_password"]}
