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
from app.services import posts as post_service
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


async def test_a_conduit_token_logs_itself_out_through_its_session(
    client: httpx.AsyncClient,
) -> None:
    user = await conduit_register(client)
    listed = await client.get("/api/users/me/sessions", headers=bearer(user["token"]))
    assert listed.status_code == 200, listed.text
    [current] = [s for s in listed.json() if s["current"]]
    ended = await client.delete(
        f"/api/users/me/sessions/{current['id']}", headers=bearer(user["token"])
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


# Articles, comments, favorites, profiles and the feed: the same posts, comments, likes and
# follows as /api.

ARTICLES = "/conduit/api/articles"
PROFILES = "/conduit/api/profiles"


async def create_article(
    client: httpx.AsyncClient, user: dict[str, Any], title: str = "Hello", **fields: Any
) -> dict[str, Any]:
    payload = {"title": title, "description": "About it", "body": "The *body*.", **fields}
    response = await client.post(ARTICLES, json={"article": payload}, headers=token(user["token"]))
    assert response.status_code == 201, response.text
    article: dict[str, Any] = response.json()["article"]
    return article


async def test_an_article_is_a_post_on_api_and_a_post_an_article(
    client: httpx.AsyncClient,
) -> None:
    jake = await conduit_register(client, "jake")
    article = await create_article(client, jake, "Hello, World", tagList=["Intro", "x_y"])
    assert article | {"createdAt": None, "updatedAt": None} == {
        "slug": "hello-world",
        "title": "Hello, World",
        "description": "About it",
        "body": "The *body*.",
        "tagList": ["intro", "x_y"],
        "createdAt": None,
        "updatedAt": None,
        "favorited": False,
        "favoritesCount": 0,
        "author": {"username": "jake", "bio": None, "image": None, "following": False},
    }
    assert article["createdAt"].endswith("Z")
    assert len(article["createdAt"]) == len("2026-12-07T10:00:00.000Z")
    post = (await client.get("/api/posts/by-slug/hello-world")).json()
    assert (post["title"], post["summary"], post["content"], post["tags"], post["published"]) == (
        "Hello, World",
        "About it",
        "The *body*.",
        ["intro", "x_y"],
        True,
    )
    # The reverse: a post written on /api, with a like and a comment there.
    anna = await register(client, "anna", bio="From /api")
    native = await create_post(client, anna, title="Native", summary="Short", tags=["t"])
    await client.put(f"/api/posts/{native['id']}/like", headers=anna.headers)
    await client.post(
        f"/api/posts/{native['id']}/comments", json={"body": "First!"}, headers=anna.headers
    )
    seen = (await client.get(f"{ARTICLES}/{native['slug']}", headers=token(jake["token"]))).json()
    assert seen["article"] | {"createdAt": None, "updatedAt": None} == {
        "slug": native["slug"],
        "title": "Native",
        "description": "Short",
        "body": native["content"],
        "tagList": ["t"],
        "createdAt": None,
        "updatedAt": None,
        "favorited": False,
        "favoritesCount": 1,
        "author": {"username": "anna", "bio": "From /api", "image": None, "following": False},
    }
    comments = (await client.get(f"{ARTICLES}/{native['slug']}/comments")).json()["comments"]
    assert [(c["body"], c["author"]["username"]) for c in comments] == [("First!", "anna")]
    listed = (await client.get(ARTICLES)).json()
    assert listed["articlesCount"] == 2
    assert [a["slug"] for a in listed["articles"]] == [native["slug"], "hello-world"]
    assert all("body" not in a for a in listed["articles"])


async def test_equal_titles_get_distinct_slugs_and_a_freed_slug_is_taken_again(
    client: httpx.AsyncClient,
) -> None:
    jake = await conduit_register(client)
    first = await create_article(client, jake, "Same")
    second = await create_article(client, jake, "Same")
    assert (first["slug"], second["slug"]) == ("same", "same-2")
    assert (await client.get(f"{ARTICLES}/same")).status_code == 200  # its slug is now cached
    deleted = await client.delete(f"{ARTICLES}/same", headers=token(jake["token"]))
    assert deleted.status_code == 204
    assert_errors(await client.get(f"{ARTICLES}/same"), 404, {"article": ["not found"]})
    again = await create_article(client, jake, "Same", body="Again")
    assert again["slug"] == "same"
    found = await client.get(f"{ARTICLES}/same")
    assert found.status_code == 200, found.text
    assert found.json()["article"]["body"] == "Again"


async def test_only_the_author_changes_or_deletes_an_article(client: httpx.AsyncClient) -> None:
    jake = await conduit_register(client, "jake")
    anna = await conduit_register(client, "anna")
    article = await create_article(client, jake)
    url = f"{ARTICLES}/{article['slug']}"
    for response in (
        await client.put(url, json={"article": {"body": "Mine"}}, headers=token(anna["token"])),
        await client.delete(url, headers=token(anna["token"])),
    ):
        assert_errors(response, 403, {"article": ["forbidden"]})
    unchanged = (await client.get(url)).json()["article"]
    assert unchanged["body"] == article["body"]
    assert_errors(
        await client.put(url, json={"article": {"body": "x"}}), 401, {"token": ["is missing"]}
    )
    changed = await client.put(
        url,
        json={"article": {"title": "New title", "description": "New", "tagList": ["a"]}},
        headers=token(jake["token"]),
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()["article"]
    assert (body["slug"], body["title"], body["description"], body["body"], body["tagList"]) == (
        article["slug"],
        "New title",
        "New",
        article["body"],
        ["a"],
    )
    assert body["updatedAt"] > article["updatedAt"]
    assert body["createdAt"] == article["createdAt"]
    for bad, field in (({"title": " "}, "title"), ({"tagList": None}, "tagList")):
        assert_errors(
            await client.put(url, json={"article": bad}, headers=token(jake["token"])),
            422,
            {field: ["can't be blank"]},
        )


async def test_drafts_written_on_api_stay_hidden(client: httpx.AsyncClient) -> None:
    anna = await register(client, "anna")
    draft = await create_post(client, anna, title="Secret", published=False)
    jake = await conduit_register(client, "jake")
    url = f"{ARTICLES}/{draft['slug']}"
    for headers in ({}, token(jake["token"])):
        assert_errors(await client.get(url, headers=headers), 404, {"article": ["not found"]})
        assert_errors(
            await client.get(f"{url}/comments", headers=headers), 404, {"article": ["not found"]}
        )
        assert (await client.get(ARTICLES, headers=headers)).json()["articlesCount"] == 0
    assert_errors(
        await client.post(f"{url}/favorite", headers=token(jake["token"])),
        404,
        {"article": ["not found"]},
    )
    assert_errors(
        await client.post(
            f"{url}/comments", json={"comment": {"body": "Hi"}}, headers=token(jake["token"])
        ),
        404,
        {"article": ["not found"]},
    )
    # Its author sees it, as on /api.
    assert (await client.get(url, headers=token(anna.access_token))).status_code == 200


async def test_favorites_are_likes(client: httpx.AsyncClient) -> None:
    anna = await register(client, "anna")
    post = await create_post(client, anna)
    jake = await conduit_register(client, "jake")
    url = f"{ARTICLES}/{post['slug']}/favorite"
    for _ in range(2):  # idempotent
        favorited = await client.post(url, headers=token(jake["token"]))
        assert favorited.status_code == 200, favorited.text
        assert (
            favorited.json()["article"]["favorited"],
            favorited.json()["article"]["favoritesCount"],
        ) == (True, 1)
    seen = (await client.get(f"/api/posts/{post['id']}", headers=bearer(jake["token"]))).json()
    assert (seen["liked_by_me"], seen["likes"]) == (True, 1)
    mine = (await client.get(ARTICLES, params={"favorited": "jake"})).json()
    assert [a["slug"] for a in mine["articles"]] == [post["slug"]]
    unfavorited = (await client.delete(url, headers=token(jake["token"]))).json()["article"]
    assert (unfavorited["favorited"], unfavorited["favoritesCount"]) == (False, 0)
    assert (await client.get(ARTICLES, params={"favorited": "jake"})).json()["articlesCount"] == 0


async def test_list_filters_and_paging(client: httpx.AsyncClient) -> None:
    jake = await conduit_register(client, "jake")
    anna = await conduit_register(client, "anna")
    for n in range(3):
        await create_article(client, jake, f"Jake {n}", tagList=["even" if n % 2 == 0 else "odd"])
    await create_article(client, anna, "Anna", tagList=["even"])

    async def slugs(**params: Any) -> tuple[list[str], int]:
        response = await client.get(ARTICLES, params=params)
        assert response.status_code == 200, response.text
        return [a["slug"] for a in response.json()["articles"]], response.json()["articlesCount"]

    assert await slugs(author="jake") == (["jake-2", "jake-1", "jake-0"], 3)
    assert await slugs(tag="even") == (["anna", "jake-2", "jake-0"], 3)
    assert await slugs(tag="Even", author="jake", limit=1, offset=1) == (["jake-0"], 2)
    assert await slugs(author="nobody") == ([], 0)
    assert_errors(await client.get(ARTICLES, params={"limit": 0}), 422, {"limit": ["is invalid"]})
    many = (await client.get(ARTICLES, params={"limit": 1000})).json()  # RealWorld: no maximum
    assert (len(many["articles"]), many["articlesCount"]) == (4, 4)
    assert_errors(
        await client.get(ARTICLES, params={"offset": -1}), 422, {"offset": ["is invalid"]}
    )
    # As deep as `/api`'s offsets go; deeper is 422, never an error of the server's.
    assert await slugs(offset=10_000, tag="even") == ([], 3)
    for deep in (10_001, 500_000, 1_000_000):
        assert_errors(
            await client.get(ARTICLES, params={"offset": deep, "tag": "even"}),
            422,
            {"offset": ["is invalid"]},
        )


async def test_articles_count_goes_past_apis_capped_total(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frontends link a page for every `limit` of `articlesCount`: /api's `total` stops at its
    cap (`total_exact: false`), Conduit's count goes on."""
    jake = await conduit_register(client, "jake")
    for n in range(5):
        await create_article(client, jake, f"Many {n}", tagList=["many"])
    monkeypatch.setattr(post_service, "TOTAL_CAP", 2)
    api = (await client.get("/api/posts", params={"tag": "many", "limit": 1})).json()
    assert (api["total"], api["total_exact"]) == (2, False)
    listed = (await client.get(ARTICLES, params={"tag": "many", "limit": 1})).json()
    assert (len(listed["articles"]), listed["articlesCount"]) == (1, 5)


async def test_comments(client: httpx.AsyncClient) -> None:
    jake = await conduit_register(client, "jake")
    anna = await conduit_register(client, "anna")
    eve = await conduit_register(client, "eve")
    first = await create_article(client, jake, "First")
    other = await create_article(client, jake, "Other")
    url = f"{ARTICLES}/{first['slug']}/comments"
    created = await client.post(
        url, json={"comment": {"body": "Nice"}}, headers=token(anna["token"])
    )
    assert created.status_code == 201, created.text
    comment = created.json()["comment"]
    assert comment["body"] == "Nice"
    assert comment["author"] == {"username": "anna", "bio": None, "image": None, "following": False}
    # Not on this article, not the author (nor the article's), no token.
    assert_errors(
        await client.delete(
            f"{ARTICLES}/{other['slug']}/comments/{comment['id']}", headers=token(anna["token"])
        ),
        404,
        {"comment": ["not found"]},
    )
    assert_errors(
        await client.delete(f"{url}/{comment['id']}", headers=token(eve["token"])),
        403,
        {"comment": ["forbidden"]},
    )
    assert_errors(await client.delete(f"{url}/{comment['id']}"), 401, {"token": ["is missing"]})
    assert_errors(
        await client.post(url, json={"comment": {"body": "  "}}, headers=token(eve["token"])),
        422,
        {"body": ["can't be blank"]},
    )
    # A reply made on /api is listed; its parent, deleted, is not (a tombstone there).
    post_id = (await client.get(f"/api/posts/by-slug/{first['slug']}")).json()["id"]
    reply = await client.post(
        f"/api/posts/{post_id}/comments",
        json={"body": "Agreed", "parent_id": comment["id"]},
        headers=bearer(jake["token"]),
    )
    assert reply.status_code == 201, reply.text
    # The article's author may delete others' comments, as on /api.
    deleted = await client.delete(f"{url}/{comment['id']}", headers=token(jake["token"]))
    assert deleted.status_code == 204
    listed = (await client.get(url)).json()["comments"]
    assert [(c["body"], c["author"]["username"]) for c in listed] == [("Agreed", "jake")]


async def test_profiles_and_follows_are_apis(client: httpx.AsyncClient) -> None:
    jake = await conduit_register(client, "jake")
    anna = await register(client, "anna", bio="Writes")
    follow = await client.post(f"{PROFILES}/anna/follow", headers=token(jake["token"]))
    assert follow.status_code == 200, follow.text
    assert follow.json() == {
        "profile": {"username": "anna", "bio": "Writes", "image": None, "following": True}
    }
    native = (await client.get("/api/profiles/anna", headers=bearer(jake["token"]))).json()
    assert (native["following"], native["followers"]) == (True, 1)
    seen = (await client.get(f"{PROFILES}/anna", headers=token(jake["token"]))).json()
    assert seen["profile"]["following"] is True
    assert (await client.get(f"{PROFILES}/anna")).json()["profile"]["following"] is False
    assert_errors(
        await client.post(f"{PROFILES}/jake/follow", headers=token(jake["token"])),
        422,
        {"profile": ["is yourself: you cannot follow yourself"]},
    )
    unfollowed = await client.delete(f"{PROFILES}/anna/follow", headers=token(jake["token"]))
    assert unfollowed.json()["profile"]["following"] is False
    assert_errors(await client.get(f"{PROFILES}/nobody"), 404, {"profile": ["not found"]})
    await client.patch(
        "/api/users/me", json={"image": "https://images.example.com/a.jpg"}, headers=anna.headers
    )
    pictured = (await client.get(f"{PROFILES}/anna")).json()["profile"]
    assert pictured["image"] == "https://images.example.com/a.jpg"


async def test_the_feed_pages_by_offset_and_follows_the_follows(client: httpx.AsyncClient) -> None:
    jake = await conduit_register(client, "jake")
    anna = await conduit_register(client, "anna")
    eve = await conduit_register(client, "eve")
    feed_url = f"{ARTICLES}/feed"

    async def feed(**params: Any) -> tuple[list[str], int]:
        response = await client.get(feed_url, params=params, headers=token(jake["token"]))
        assert response.status_code == 200, response.text
        return [a["slug"] for a in response.json()["articles"]], response.json()["articlesCount"]

    await create_article(client, anna, "A1")
    await create_article(client, eve, "E1")
    assert await feed() == ([], 0)
    await client.post(f"{PROFILES}/anna/follow", headers=token(jake["token"]))
    assert await feed() == (["a1"], 1)
    await create_article(client, anna, "A2")
    assert await feed() == (["a2", "a1"], 2)
    assert await feed(limit=1, offset=1) == (["a1"], 2)
    await client.post(f"{ARTICLES}/a2/favorite", headers=token(jake["token"]))
    first = (await client.get(feed_url, headers=token(jake["token"]))).json()["articles"][0]
    assert (first["favorited"], first["favoritesCount"], first["author"]["following"]) == (
        True,
        1,
        True,
    )
    await client.delete(f"{ARTICLES}/a2", headers=token(anna["token"]))
    assert await feed() == (["a1"], 1)
    await client.delete(f"{PROFILES}/anna/follow", headers=token(jake["token"]))
    assert await feed() == ([], 0)
    assert_errors(await client.get(feed_url), 401, {"token": ["is missing"]})


async def test_user_image_is_kept_https_only(client: httpx.AsyncClient) -> None:
    jake = await conduit_register(client)
    headers = token(jake["token"])
    image = "https://images.example.com/jake.jpg"
    updated = await client.put(USER, json={"user": {"image": image}}, headers=headers)
    assert updated.json()["user"]["image"] == image
    me = (await client.get("/api/users/me", headers=bearer(jake["token"]))).json()
    assert me["image"] == image
    assert_errors(
        await client.put(USER, json={"user": {"image": "http://x.example/a.jpg"}}, headers=headers),
        422,
        {"image": ["is invalid (an https URL)"]},
    )
    cleared = await client.put(USER, json={"user": {"image": ""}}, headers=headers)
    assert cleared.json()["user"]["image"] is None


# Every operation of RealWorld's openapi.yml, as (method, path, operationId).
REALWORLD_OPERATIONS = {
    ("post", "/api/users/login", "Login"),
    ("post", "/api/users", "CreateUser"),
    ("get", "/api/user", "GetCurrentUser"),
    ("put", "/api/user", "UpdateCurrentUser"),
    ("get", "/api/profiles/{username}", "GetProfileByUsername"),
    ("post", "/api/profiles/{username}/follow", "FollowUserByUsername"),
    ("delete", "/api/profiles/{username}/follow", "UnfollowUserByUsername"),
    ("get", "/api/articles/feed", "GetArticlesFeed"),
    ("get", "/api/articles", "GetArticles"),
    ("post", "/api/articles", "CreateArticle"),
    ("get", "/api/articles/{slug}", "GetArticle"),
    ("put", "/api/articles/{slug}", "UpdateArticle"),
    ("delete", "/api/articles/{slug}", "DeleteArticle"),
    ("get", "/api/articles/{slug}/comments", "GetArticleComments"),
    ("post", "/api/articles/{slug}/comments", "CreateArticleComment"),
    ("delete", "/api/articles/{slug}/comments/{id}", "DeleteArticleComment"),
    ("post", "/api/articles/{slug}/favorite", "CreateArticleFavorite"),
    ("delete", "/api/articles/{slug}/favorite", "DeleteArticleFavorite"),
    ("get", "/api/tags", "GetTags"),
}


async def test_the_conduit_document_has_every_realworld_operation(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/conduit/openapi.json")).json()
    operations = {
        (method, path, operation["operationId"])
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert operations == REALWORLD_OPERATIONS
    listed = document["components"]["schemas"]["ArticleListItem"]["properties"]
    assert "body" not in listed
    assert "body" in document["components"]["schemas"]["Article"]["properties"]
    paths = document["paths"]
    optional: list[dict[str, list[str]]] = [{}, {"Token": []}]
    assert paths["/api/articles"]["get"]["security"] == optional
    assert paths["/api/articles/{slug}"]["get"]["security"] == optional
    assert paths["/api/profiles/{username}"]["get"]["security"] == optional
    assert paths["/api/articles"]["post"]["security"] == [{"Token": []}]
    assert paths["/api/articles/feed"]["get"]["security"] == [{"Token": []}]


async def test_any_slug_is_answered_in_conduits_shape(client: httpx.AsyncClient) -> None:
    for slug in ("a%0Ab", "%C2%BD%16", "x" * 100):
        response = await client.get(f"{ARTICLES}/{slug}")
        assert_errors(response, 404, {"article": ["not found"]})


async def test_an_article_titled_feed_does_not_hide_behind_the_feed(
    client: httpx.AsyncClient,
) -> None:
    jake = await conduit_register(client)
    article = await create_article(client, jake, "Feed")
    assert article["slug"] == "feed-2"
    found = await client.get(f"{ARTICLES}/feed-2")
    assert found.json()["article"]["title"] == "Feed"


async def test_a_trailing_slash_is_served_not_redirected(client: httpx.AsyncClient) -> None:
    jake = await conduit_register(client)
    payload = {"article": {"title": "Slash", "description": "d", "body": "b"}}
    created = await client.post(f"{ARTICLES}/", json=payload, headers=token(jake["token"]))
    assert created.status_code == 201, created.text
    listed = await client.get(f"{ARTICLES}/")
    assert listed.json()["articlesCount"] == 1
