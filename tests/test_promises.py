"""Promises README's Security section makes, checked against the literal values it names (not
against the app's own constants, so a header dropped from them makes these fail)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from app.config import Settings
from tests import images
from tests.conftest import running_app, settings_like
from tests.factories import create_post, register
from tests.problems import assert_problem

# The e-mail link pages' headers: tests/test_email_links.py (assert_safe_page, on every page).


def test_openapi_says_a_new_email_needs_the_current_password(app: FastAPI) -> None:
    schema = app.openapi()
    body = schema["paths"]["/api/users/me"]["patch"]["requestBody"]["content"]
    ref = body["application/json"]["schema"]["$ref"]
    declared = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert declared["dependentRequired"] == {"email": ["current_password"]}


# README, Security, Bounded request bodies: an upload form has at most MAX_UPLOAD_PARTS parts.
BOUNDARY = "promisesboundary"


def _form(fields: int) -> bytes:
    """An upload form: `fields` empty text fields, then the file."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="field{i}"\r\n\r\n\r\n'.encode()
        for i in range(fields)
    ]
    file_headers = (
        'Content-Disposition: form-data; name="file"; filename="p.png"\r\n'
        "Content-Type: image/png\r\n"
    )
    parts.append(f"--{BOUNDARY}\r\n{file_headers}\r\n".encode() + images.tiny_png() + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def test_an_upload_form_may_have_max_upload_parts_parts_and_no_more(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    author = await register(client)
    post = await create_post(client, author)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **author.headers}
    url = f"/api/posts/{post['id']}/images"
    limit = settings.max_upload_parts

    over = await client.post(url, content=_form(limit), headers=headers)
    problem = assert_problem(over, 413, "payload_too_large")
    assert "parts" in problem["detail"]

    at_limit = await client.post(url, content=_form(limit - 1), headers=headers)
    assert at_limit.status_code == 202, at_limit.text


# SPEC §6: CORS from CORS_ORIGINS only.
async def test_cors_answers_only_the_configured_origins(settings: Settings) -> None:
    allowed, other = "https://app.example.com", "https://evil.example.net"
    async with running_app(settings_like(settings, cors_origins=[allowed])) as (_, client):
        for origin, expected in ((allowed, allowed), (other, None)):
            preflight = await client.options(
                "/api/posts",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )
            assert preflight.headers.get("access-control-allow-origin") == expected, origin
            simple = await client.get("/api/posts", headers={"Origin": origin})
            assert simple.status_code == 200, simple.text
            assert simple.headers.get("access-control-allow-origin") == expected, origin
