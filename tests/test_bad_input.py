"""Bad input of every kind answers a 4xx problem+json, never a 500, and stores nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuthSession, Post, User
from tests.factories import PASSWORD, Account, register

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}
JSON = {"Content-Type": "application/json"}
ONE_MB = 1024 * 1024
MALFORMED_BODIES = [
    b'{"title": "x",',
    b"{'title': 'single quotes'}",
    b'{"title": "x"} trailing',
    b"{",
    b"not json at all",
    b"\xff\xfe\x00garbage",
]
NON_OBJECT_BODIES = [b"[]", b'[{"title": "x"}]', b'"a string"', b"42", b"true", b"null"]


def assert_problem(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx RFC 9457 problem body; `status` pins the exact code when given."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == response.status_code
    assert isinstance(body["code"], str)
    assert body["code"]
    assert isinstance(body["detail"], str)
    assert "Traceback" not in response.text
    if response.status_code == 422:
        assert isinstance(body["errors"], list)
        assert body["errors"]
        for error in body["errors"]:
            assert set(error) == {"loc", "msg", "type"}
            assert isinstance(error["loc"], list)
    return body


async def count(db: AsyncSession, model: type[Any]) -> int:
    return await db.scalar(select(func.count()).select_from(model)) or 0


async def author(client: httpx.AsyncClient) -> Account:
    return await register(client, username="author")


# --- bodies that are not JSON objects ---------------------------------------------------------
@pytest.mark.parametrize("body", MALFORMED_BODIES)
async def test_malformed_json_on_register_is_a_problem_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession, body: bytes
) -> None:
    response = await client.post("/api/users", content=body, headers=JSON)

    assert_problem(response)
    assert await count(db, User) == 0


@pytest.mark.parametrize("body", MALFORMED_BODIES)
async def test_malformed_json_on_create_post_is_a_problem_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession, body: bytes
) -> None:
    writer = await author(client)

    response = await client.post("/api/posts", content=body, headers={**JSON, **writer.headers})

    assert_problem(response)
    assert await count(db, Post) == 0


@pytest.mark.parametrize("body", MALFORMED_BODIES)
async def test_malformed_json_on_login_is_a_problem_and_opens_no_session(
    client: httpx.AsyncClient, db: AsyncSession, body: bytes
) -> None:
    await register(client, username="alice")
    sessions = await count(db, AuthSession)

    response = await client.post("/api/token", content=body, headers=JSON)

    assert_problem(response)
    assert await count(db, AuthSession) == sessions


@pytest.mark.parametrize("body", NON_OBJECT_BODIES)
async def test_non_object_json_on_register_is_422(
    client: httpx.AsyncClient, db: AsyncSession, body: bytes
) -> None:
    response = await client.post("/api/users", content=body, headers=JSON)

    assert_problem(response, 422)
    assert await count(db, User) == 0


@pytest.mark.parametrize("body", NON_OBJECT_BODIES)
async def test_non_object_json_on_create_post_is_422(
    client: httpx.AsyncClient, db: AsyncSession, body: bytes
) -> None:
    writer = await author(client)

    response = await client.post("/api/posts", content=body, headers={**JSON, **writer.headers})

    assert_problem(response, 422)
    assert await count(db, Post) == 0


@pytest.mark.parametrize("body", NON_OBJECT_BODIES)
async def test_non_object_json_on_login_is_422(
    client: httpx.AsyncClient, db: AsyncSession, body: bytes
) -> None:
    await register(client, username="alice")
    sessions = await count(db, AuthSession)

    response = await client.post("/api/token", content=body, headers=JSON)

    assert_problem(response, 422)
    assert await count(db, AuthSession) == sessions


@pytest.mark.parametrize("path", ["/api/users", "/api/token", "/api/posts"])
async def test_empty_body_is_422(client: httpx.AsyncClient, path: str) -> None:
    writer = await author(client)

    response = await client.post(path, content=b"", headers={**JSON, **writer.headers})

    assert_problem(response, 422)


@pytest.mark.parametrize("path", ["/api/users", "/api/token", "/api/posts"])
async def test_deeply_nested_json_is_a_problem_not_a_500(
    client: httpx.AsyncClient, db: AsyncSession, path: str
) -> None:
    writer = await author(client)
    depth = 100_000
    body = b"[" * depth + b"]" * depth

    response = await client.post(path, content=body, headers={**JSON, **writer.headers})

    assert_problem(response)
    assert await count(db, User) == 1
    assert await count(db, Post) == 0


async def test_registration_as_plain_text_is_a_problem(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    response = await client.post(
        "/api/users",
        content=b'{"email": "a@example.com", "username": "abc", "password": "12345678"}',
        headers={"Content-Type": "text/plain"},
    )

    assert_problem(response)
    assert await count(db, User) == 0


# --- fields of the wrong type or size ---------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {"title": 123},
        {"title": None},
        {"title": ["a"]},
        {"content": {"text": "x"}},
        {"published": "maybe"},
        {"published": 2},
        {"tags": "x"},
        {"tags": [1, 2]},
        {"tags": [["nested"]]},
        {"tags": [f"tag{i}" for i in range(11)]},
        {"tags": ["not a tag!"]},
        {"title": "   "},
        {"content": ""},
        {"title": "x" * 201},
        {"title": "x" * ONE_MB},
        {"content": "x" * 50_001},
    ],
)
async def test_create_post_with_wrong_types_or_sizes_is_422_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession, fields: dict[str, Any]
) -> None:
    writer = await author(client)
    body = {"title": "A title", "content": "Some content.", **fields}

    response = await client.post("/api/posts", json=body, headers=writer.headers)

    # A body-size limit answering 413 for the 1 MB title would be as good as 422.
    assert response.status_code in (413, 422), response.text
    assert_problem(response)
    assert await count(db, Post) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"username": 123},
        {"password": 12345678},
        {"email": ["a@example.com"]},
        {"full_name": {"first": "A"}},
        {"bio": False},
        {"full_name": "x" * ONE_MB},
        {"email": "a" * 250 + "@example.com"},
    ],
)
async def test_register_with_wrong_types_or_sizes_is_422_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession, fields: dict[str, Any]
) -> None:
    body = {"email": "alice@example.com", "username": "alice", "password": PASSWORD, **fields}

    response = await client.post("/api/users", json=body)

    assert response.status_code in (413, 422), response.text
    assert_problem(response)
    assert await count(db, User) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"username": 1, "password": PASSWORD},
        {"username": "alice", "password": None},
        {"username": "alice"},
        {"username": "x" * ONE_MB, "password": PASSWORD},
        {"username": "alice", "password": "x" * ONE_MB},
        {"username": "alice", "password": PASSWORD, "scope": "admin"},
    ],
)
async def test_login_with_wrong_types_or_sizes_is_422(
    client: httpx.AsyncClient, db: AsyncSession, body: dict[str, Any]
) -> None:
    await register(client, username="alice")
    sessions = await count(db, AuthSession)

    response = await client.post("/api/token", json=body)

    assert response.status_code in (413, 422), response.text
    assert_problem(response)
    assert await count(db, AuthSession) == sessions


# PostgreSQL refuses NUL in text; the API must refuse it first, the same way on every database.
async def test_nul_character_in_post_title_is_a_problem_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    writer = await author(client)

    response = await client.post(
        "/api/posts", json={"title": "a\x00b", "content": "text"}, headers=writer.headers
    )

    assert_problem(response)
    assert await count(db, Post) == 0


async def test_nul_character_in_full_name_is_a_problem_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    response = await client.post(
        "/api/users",
        json={
            "email": "alice@example.com",
            "username": "alice",
            "password": PASSWORD,
            "full_name": "Al\x00ice",
        },
    )

    assert_problem(response)
    assert await count(db, User) == 0


async def test_nul_character_in_login_is_a_problem(client: httpx.AsyncClient) -> None:
    await register(client, username="alice")

    response = await client.post("/api/token", json={"username": "al\x00ice", "password": "x"})

    assert_problem(response)


async def test_nul_character_in_post_search_is_not_a_500(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/posts", params={"q": "a\x00b"})

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_problem(response)


# --- query parameters -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "1.5"},
        {"limit": "99999999999999999999999"},
        {"offset": "-1"},
        {"offset": "x"},
        {"offset": "1000001"},
        {"sort": "password_hash"},
        {"sort": "--created_at"},
        {"q": "x" * 201},
        {"author": "x" * 33},
        {"tag": ["t"] * 11},
    ],
)
async def test_post_list_query_out_of_range_is_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await client.get("/api/posts", params=params)

    assert_problem(response, 422)


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "101"}, {"limit": "many"}, {"q": "x" * 33}]
)
async def test_tag_list_query_out_of_range_is_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await client.get("/api/tags", params=params)

    assert_problem(response, 422)


@pytest.mark.parametrize("post_id", ["abc", "0", "-5", str(2**63), "1e3"])
async def test_invalid_post_id_is_422(client: httpx.AsyncClient, post_id: str) -> None:
    response = await client.get(f"/api/posts/{post_id}")

    assert_problem(response, 422)


# --- routes and methods -----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/nope", "/nope", "/api/users/1/nope", "/api"])
async def test_unknown_route_is_404_problem(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    body = assert_problem(response, 404)
    assert body["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/users/me"),
        ("GET", "/api/token"),
        ("DELETE", "/api/posts"),
        ("POST", "/health"),
    ],
)
async def test_wrong_method_is_405_problem_with_allow(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)

    body = assert_problem(response, 405)
    assert body["code"] == "method_not_allowed"
    assert "allow" in response.headers


# --- authorization headers --------------------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Basic YWxpY2U6Y29ycmVjdCBob3JzZSBiYXR0ZXJ5",
        "Bearer a.b.c",
        "Bearer not-a-jwt",
        "Bearer eyJhbGciOiJub25lIn0.e30.",
        "Token xyz",
        "bearer",
        "Bearer " + "a" * 10_000,
    ],
)
async def test_bad_authorization_header_is_401_with_www_authenticate(
    client: httpx.AsyncClient, authorization: str
) -> None:
    await register(client, username="alice")

    response = await client.get("/api/users/me", headers={"Authorization": authorization})

    assert_problem(response, 401)
    assert response.headers["www-authenticate"].lower().startswith("bearer")


async def test_bad_authorization_header_creates_no_post(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    response = await client.post(
        "/api/posts",
        json={"title": "t", "content": "c"},
        headers={"Authorization": "Bearer a.b.c"},
    )

    assert_problem(response, 401)
    assert await count(db, Post) == 0


# --- request ids ------------------------------------------------------------------------------
async def test_request_id_is_echoed_back(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "abc-123.def"})

    assert response.headers["x-request-id"] == "abc-123.def"


async def test_request_id_is_echoed_on_problems_too(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nope", headers={"X-Request-ID": "trace-42"})

    assert_problem(response, 404)
    assert response.headers["x-request-id"] == "trace-42"


async def test_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    first = await client.get("/health")
    second = await client.get("/health")

    assert first.headers["x-request-id"]
    assert second.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("incoming", [b"has space", b"x" * 129, "caf\u00e9".encode(), b"a\tb"])
async def test_unsafe_request_id_is_replaced(client: httpx.AsyncClient, incoming: bytes) -> None:
    response = await client.get("/health", headers={b"X-Request-ID": incoming})

    replaced = response.headers["x-request-id"]
    assert replaced
    assert replaced.encode("latin-1") != incoming
