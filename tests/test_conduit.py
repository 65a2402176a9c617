"""The RealWorld ("Conduit") API at /conduit, beyond what the RealWorld suite checks: both token
schemes, the error shape, its own OpenAPI document, CORS, the token lifetime, revocation from
/api, and accounts shared with /api."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import User
from tests.conftest import running_app, settings_like
from tests.factories import bearer, create_post, login, register, session_id
from tests.test_observability import REQUESTS, scrape

USERS = "/conduit/api/users"
USER = "/conduit/api/user"
PASSWORD = "password123"  # common, refused by /api, accepted by RealWorld's rule


def token(value: str) -> dict[str, str]:
    return {"Authorization": f"Token {value}"}


async def conduit_register(
    client: httpx.AsyncClient, name: str = "jake", password: str = PASSWORD
) -> dict[str, Any]:
    response = await client.post(
        USERS,
        json={"user": {"username": name, "email": f"{name}@example.com", "password": password}},
    )
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()["user"]
    return user


def assert_errors(response: httpx.Response, status: int, errors: dict[str, list[str]]) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"errors": errors}


async def test_register_answers_the_user_with_a_token(client: httpx.AsyncClient) -> None:
    user = await conduit_register(client)
    assert user == {
        "email": "jake@example.com",
        "token": user["token"],
        "username": "jake",
        "bio": None,
        "image": None,
    }
    me = await client.get(USER, headers=token(user["token"]))
    assert me.status_code == 200, me.text
    assert me.json()["user"] | {"token": None} == user | {"token": None}
    assert me.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "token", "bearer"])
async def test_token_and_bearer_schemes_both_work(client: httpx.AsyncClient, scheme: str) -> None:
    user = await conduit_register(client)
    me = await client.get(USER, headers={"Authorization": f"{scheme} {user['token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["user"]["username"] == "jake"


async def test_login_by_email(client: httpx.AsyncClient) -> None:
    await conduit_register(client)
    response = await client.post(
        f"{USERS}/login", json={"user": {"email": "Jake@Example.com", "password": PASSWORD}}
    )
    assert response.status_code == 200, response.text
    logged_in = response.json()["user"]
    assert logged_in["username"] == "jake"
    assert (await client.get(USER, headers=token(logged_in["token"]))).status_code == 200


async def test_missing_and_bad_tokens_are_401_in_conduits_shape(
    client: httpx.AsyncClient,
) -> None:
    user = await conduit_register(client)
    missing = await client.get(USER)
    assert_errors(missing, 401, {"token": ["is missing"]})
    assert missing.headers["www-authenticate"] == "Token"
    for header in (
        "Token not-a-jwt",
        f"Basic {user['token']}",
        "Token",
        f"Token {user['token']}x",
    ):
        bad = await client.put(USER, json={"user": {"bio": "x"}}, headers={"Authorization": header})
        assert_errors(bad, 401, {"token": ["is invalid"]})
    # /api keeps its own shape.
    native = await client.get("/api/users/me")
    assert native.status_code == 401
    assert native.headers["content-type"] == "application/problem+json"


async def test_validation_errors_name_each_field(client: httpx.AsyncClient) -> None:
    blank = await client.post(USERS, json={"user": {"username": "", "email": "", "password": ""}})
    assert_errors(
        blank,
        422,
        {
            "username": ["can't be blank"],
            "email": ["can't be blank"],
            "password": ["can't be blank"],
        },
    )
    absent = await client.post(USERS, json={"user": {}})
    assert_errors(
        absent,
        422,
        {
            "username": ["can't be blank"],
            "email": ["can't be blank"],
            "password": ["can't be blank"],
        },
    )
    bad = await client.post(
        USERS, json={"user": {"username": "Jake Smith", "email": "nope", "password": "short"}}
    )
    assert_errors(
        bad,
        422,
        {
            "username": ["is invalid (3 to 32 characters: a-z, 0-9 and _)"],
            "email": ["is invalid"],
            "password": ["is too short (minimum is 8 characters)"],
        },
    )
    assert_errors(await client.post(USERS, json={}), 422, {"user": ["can't be blank"]})
    not_json = await client.post(
        USERS, content=b"{oops", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert list(not_json.json()["errors"]) == ["body"]
    too_long = await client.post(
        USERS, json={"user": {"username": "jake", "email": "j@example.com", "password": "a" * 129}}
    )
    assert_errors(too_long, 422, {"password": ["is too long (maximum is 128 characters)"]})


async def test_unknown_route_and_method_answer_in_conduits_shape(client: httpx.AsyncClient) -> None:
    assert_errors(await client.get("/conduit/api/nothing"), 404, {"body": ["not found"]})
    wrong_method = await client.delete(USER)
    assert_errors(wrong_method, 405, {"body": ["method not allowed"]})
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "PUT"}


async def test_taken_username_and_email_are_409(client: httpx.AsyncClient) -> None:
    await conduit_register(client, "jake")
    other = await conduit_register(client, "anna")
    taken_name = await client.post(
        USERS, json={"user": {"username": "jake", "email": "new@example.com", "password": PASSWORD}}
    )
    assert_errors(taken_name, 409, {"username": ["has already been taken"]})
    taken_email = await client.post(
        USERS,
        json={"user": {"username": "new", "email": "jake@example.com", "password": PASSWORD}},
    )
    assert_errors(taken_email, 409, {"email": ["has already been taken"]})
    # Another user's name or address cannot be taken over by an update either.
    for change, field in (
        ({"username": "jake"}, "username"),
        ({"email": "jake@example.com"}, "email"),
    ):
        response = await client.put(USER, json={"user": change}, headers=token(other["token"]))
        assert_errors(response, 409, {field: ["has already been taken"]})
    me = await client.get(USER, headers=token(other["token"]))
    assert (me.json()["user"]["username"], me.json()["user"]["email"]) == (
        "anna",
        "anna@example.com",
    )


async def test_wrong_password_is_401_credentials_invalid(client: httpx.AsyncClient) -> None:
    await conduit_register(client)
    wrong = await client.post(
        f"{USERS}/login", json={"user": {"email": "jake@example.com", "password": "not-it-at-all"}}
    )
    assert_errors(wrong, 401, {"credentials": ["invalid"]})
    unknown = await client.post(
        f"{USERS}/login", json={"user": {"email": "who@example.com", "password": PASSWORD}}
    )
    assert_errors(unknown, 401, {"credentials": ["invalid"]})


async def test_logins_stay_rate_limited(client: httpx.AsyncClient, settings: Settings) -> None:
    await conduit_register(client)
    body = {"user": {"email": "jake@example.com", "password": "not-it-at-all"}}
    answers = [(await client.post(f"{USERS}/login", json=body)) for _ in range(12)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert int(limited[0].headers["retry-after"]) > 0
    assert list(limited[0].json()["errors"]) == ["body"]


async def test_update_user(client: httpx.AsyncClient) -> None:
    user = await conduit_register(client)
    headers = token(user["token"])

    async def put(**change: Any) -> dict[str, Any]:
        response = await client.put(USER, json={"user": change}, headers=headers)
        assert response.status_code == 200, response.text
        updated: dict[str, Any] = response.json()["user"]
        assert updated == (await client.get(USER, headers=headers)).json()["user"]
        return updated

    assert (await put(bio="Writes about tea."))["bio"] == "Writes about tea."
    assert (await put(bio=""))["bio"] is None
    await put(bio="again")
    assert (await put(bio=None))["bio"] is None
    # Frontends send back what they were given: unknown fields are ignored.
    assert (await put(bio="kept", token=user["token"], following=False))["bio"] == "kept"
    renamed = await put(username="jake_smith", email="smith@example.com")
    assert (renamed["username"], renamed["email"], renamed["bio"]) == (
        "jake_smith",
        "smith@example.com",
        "kept",
    )
    for field in ("email", "username", "password"):
        refused = await client.put(USER, json={"user": {field: None}}, headers=headers)
        assert_errors(refused, 422, {field: ["can't be blank"]})
        refused = await client.put(USER, json={"user": {field: ""}}, headers=headers)
        assert_errors(refused, 422, {field: ["can't be blank"]})


async def test_a_new_email_is_in_effect_at_once_and_unverified(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    user = await conduit_register(client)
    tokens = await login(client, "jake", PASSWORD)
    me = await client.get("/api/users/me", headers=bearer(tokens["access_token"]))
    await db.execute(update(User).where(User.id == me.json()["id"]).values(is_verified=True))
    await db.commit()
    response = await client.put(
        USER, json={"user": {"email": "new@example.com"}}, headers=token(user["token"])
    )
    assert response.status_code == 200, response.text
    native = (await client.get("/api/users/me", headers=bearer(tokens["access_token"]))).json()
    assert (native["email"], native["pending_email"], native["is_verified"]) == (
        "new@example.com",
        None,
        False,
    )


async def test_a_new_password_ends_the_other_sessions(client: httpx.AsyncClient) -> None:
    user = await conduit_register(client)
    elsewhere = await login(client, "jake", PASSWORD)
    response = await client.put(
        USER, json={"user": {"password": "a new pass phrase"}}, headers=token(user["token"])
    )
    assert response.status_code == 200, response.text
    assert (await client.get(USER, headers=token(user["token"]))).status_code == 200
    ended = await client.get("/api/users/me", headers=bearer(elsewhere["access_token"]))
    assert ended.status_code == 401
    old = await client.post("/api/token", json={"username": "jake", "password": PASSWORD})
    assert old.status_code == 401
    await login(client, "jake", "a new pass phrase")


async def test_a_conduit_user_logs_in_on_api_and_the_reverse(client: httpx.AsyncClient) -> None:
    await conduit_register(client, "jake")
    tokens = await login(client, "jake", PASSWORD)
    me = await client.get("/api/users/me", headers=bearer(tokens["access_token"]))
    assert (me.json()["username"], me.json()["email"]) == ("jake", "jake@example.com")

    native = await register(client, "anna", bio="From /api")
    response = await client.post(
        f"{USERS}/login", json={"user": {"email": native.email, "password": native.password}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["user"]["bio"] == "From /api"
    # An /api token works on /conduit too (as `Bearer`, or as `Token`).
    assert (await client.get(USER, headers=token(native.access_token))).status_code == 200


async def test_ending_the_session_on_api_revokes_the_conduit_token(
    client: httpx.AsyncClient,
) -> None:
    user = await conduit_register(client)
    tokens = await login(client, "jake", PASSWORD)
    conduit_session = session_id(user["token"])
    ended = await client.delete(
        f"/api/users/me/sessions/{conduit_session}", headers=bearer(tokens["access_token"])
    )
    assert ended.status_code == 204, ended.text
    assert_errors(
        await client.get(USER, headers=token(user["token"])), 401, {"token": ["is invalid"]}
    )


async def test_changing_the_password_on_api_revokes_the_conduit_token(
    client: httpx.AsyncClient,
) -> None:
    user = await conduit_register(client, password="a long pass phrase")
    tokens = await login(client, "jake", "a long pass phrase")
    changed = await client.post(
        "/api/users/me/password",
        json={"current_password": "a long pass phrase", "new_password": "another pass phrase"},
        headers=bearer(tokens["access_token"]),
    )
    assert changed.status_code == 204, changed.text
    assert (await client.get(USER, headers=token(user["token"]))).status_code == 401


async def test_a_deactivated_account_token_is_refused(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    user = await conduit_register(client)
    await db.execute(update(User).where(User.username == "jake").values(is_active=False))
    await db.commit()
    assert (await client.get(USER, headers=token(user["token"]))).status_code == 401


def lifetime(access_token: str) -> timedelta:
    claims = jwt.decode(access_token, options={"verify_signature": False})
    return datetime.fromtimestamp(claims["exp"], UTC) - datetime.fromtimestamp(claims["iat"], UTC)


async def test_the_token_lives_conduit_token_expire_minutes(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await conduit_register(client)
    assert settings.conduit_token_expire_minutes == 1440
    assert lifetime(user["token"]) == timedelta(days=1)
    # /api's own tokens keep their lifetime.
    native = await register(client, "anna")
    assert lifetime(native.access_token) == timedelta(minutes=settings.access_token_expire_minutes)

    async with running_app(settings_like(settings, conduit_token_expire_minutes=7)) as (_, other):
        short = await conduit_register(other, "short")
        assert lifetime(short["token"]) == timedelta(minutes=7)
        login_answer = await other.post(
            f"{USERS}/login", json={"user": {"email": "short@example.com", "password": PASSWORD}}
        )
        assert lifetime(login_answer.json()["user"]["token"]) == timedelta(minutes=7)


async def test_an_expired_token_is_401(client: httpx.AsyncClient, settings: Settings) -> None:
    user = await conduit_register(client)
    claims = jwt.decode(user["token"], options={"verify_signature": False})
    past = datetime.now(UTC) - timedelta(minutes=1)
    claims |= {"iat": past - timedelta(minutes=5), "exp": past}
    expired = jwt.encode(claims, settings.jwt_signing_key(), settings.jwt_algorithm)
    assert_errors(await client.get(USER, headers=token(expired)), 401, {"token": ["has expired"]})


async def test_tags_lists_the_tags_of_published_posts(client: httpx.AsyncClient) -> None:
    author = await register(client)
    await create_post(client, author, tags=["tea", "cakes"])
    await create_post(client, author, tags=["tea"])
    await create_post(client, author, tags=["secret"], published=False)
    response = await client.get("/conduit/api/tags")
    assert response.status_code == 200, response.text
    assert response.json() == {"tags": ["tea", "cakes"]}


async def test_the_conduit_openapi_document_is_its_own(client: httpx.AsyncClient) -> None:
    conduit = (await client.get("/conduit/openapi.json")).json()
    assert conduit["info"]["version"] == "2.0.0"
    assert set(conduit["paths"]) >= {"/api/users", "/api/users/login", "/api/user", "/api/tags"}
    assert not any(path.startswith("/api/posts") for path in conduit["paths"])
    assert conduit["servers"] == [{"url": "/conduit"}]
    assert "Token" in conduit["components"]["securitySchemes"]
    update = conduit["components"]["schemas"]["UpdateUser"]["properties"]
    assert update["email"]["type"] == update["password"]["type"] == "string"
    assert {"type": "null"} in update["bio"]["anyOf"]
    inkwell = (await client.get("/openapi.json")).json()
    assert "/api/posts" in inkwell["paths"]
    assert not any("conduit" in path or path == "/api/user" for path in inkwell["paths"])
    docs = await client.get("/conduit/docs")
    assert docs.status_code == 200
    assert "/conduit/openapi.json" in docs.text


async def test_no_conduit_docs_when_docs_are_off(settings: Settings) -> None:
    async with running_app(settings_like(settings, docs_enabled=False)) as (_, other):
        assert (await other.get("/conduit/openapi.json")).status_code == 404
        assert (await other.get("/conduit/docs")).status_code == 404


async def test_cors_for_conduit_follows_cors_origins(settings: Settings) -> None:
    allowed, other_origin = "https://conduit.example.com", "https://evil.example.net"
    async with running_app(settings_like(settings, cors_origins=[allowed])) as (_, client):
        for origin, expected in ((allowed, allowed), (other_origin, None)):
            preflight = await client.options(
                USER,
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "PUT",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
            )
            assert preflight.headers.get("access-control-allow-origin") == expected, origin
            tags = await client.get("/conduit/api/tags", headers={"Origin": origin})
            assert tags.status_code == 200, tags.text
            assert tags.headers.get("access-control-allow-origin") == expected, origin


async def test_metrics_name_conduit_routes_apart_from_apis(client: httpx.AsyncClient) -> None:
    await conduit_register(client)
    await register(client, "anna")
    await client.get("/conduit/api/tags")
    await client.get("/conduit/api/nothing/42")
    routes = {dict(labels)["route"] for labels in (await scrape(client)).series(REQUESTS)}
    assert {"/conduit/api/users", "/api/users", "/conduit/api/tags", "/conduit/{path}"} <= routes
    assert not any("42" in route for route in routes)
