"""Responses that carry tokens are never stored by a browser, proxy or CDN: `Cache-Control:
no-store` and `Pragma: no-cache` on every answer of the token routes (errors included) and on
registration, which answers with a token pair (SPEC 6)."""

from __future__ import annotations

import httpx

from tests.factories import PASSWORD, register


def assert_not_stored(response: httpx.Response) -> None:
    assert response.headers.get("cache-control") == "no-store", response.headers
    assert response.headers.get("pragma") == "no-cache", response.headers


async def test_every_answer_carrying_tokens_is_no_store(client: httpx.AsyncClient) -> None:
    registered = await client.post(
        "/api/users",
        json={"username": "nostore", "email": "nostore@example.com", "password": PASSWORD},
    )
    assert registered.status_code == 201, registered.text
    assert "access_token" in registered.json()["tokens"]
    assert_not_stored(registered)

    credentials = {"username": "nostore", "password": PASSWORD}
    for path in ("/api/token", "/api/token/"):
        logged_in = await client.post(path, json=credentials)
        assert logged_in.status_code == 200, logged_in.text
        assert_not_stored(logged_in)
    form = await client.post("/api/token", data={"grant_type": "password", **credentials})
    assert form.status_code == 200, form.text
    assert_not_stored(form)

    refreshed = await client.post(
        "/api/token/refresh", json={"refresh_token": form.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert_not_stored(refreshed)

    verified = await client.post(
        "/api/token/verify", json={"token": refreshed.json()["access_token"]}
    )
    assert verified.status_code == 200, verified.text
    assert_not_stored(verified)
    revoked = await client.post(
        "/api/token/revoke", json={"refresh_token": refreshed.json()["refresh_token"]}
    )
    assert revoked.status_code == 204, revoked.text
    assert_not_stored(revoked)


async def test_token_route_errors_are_no_store_too(client: httpx.AsyncClient) -> None:
    account = await register(client)
    wrong = await client.post(
        "/api/token", json={"username": account.username, "password": "not the password"}
    )
    assert wrong.status_code == 401, wrong.text
    assert_not_stored(wrong)
    invalid = await client.post("/api/token/refresh", json={"refresh_token": 42})
    assert invalid.status_code == 422, invalid.text
    assert_not_stored(invalid)
    spent = await client.post("/api/token/refresh", json={"refresh_token": "x.y.z"})
    assert spent.status_code == 401, spent.text
    assert_not_stored(spent)


async def test_other_routes_keep_their_own_caching(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.headers.get("pragma") is None
    assert health.headers.get("cache-control") != "no-store"
