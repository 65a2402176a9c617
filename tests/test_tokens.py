"""POST /api/token, /refresh, /verify and /revoke: logins, rotation, reuse detection, and every
way a token can be wrong (SPEC 4 "Tokens", 5 and 6)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core.security import fingerprint
from app.models import AuthSession
from tests.factories import PASSWORD, Account, login, register, session_id, stored_sessions
from tests.problems import assert_problem

ACCESS_TTL_S = 15 * 60
REFRESH_TTL_S = 14 * 24 * 3600
CLAIMS = {"sub", "type", "jti", "sid", "iat", "exp", "iss", "aud"}
OTHER_KEY = "another-secret-another-secret-another-secret-0123"


# --- helpers ------------------------------------------------------------------------------------


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def secret(settings: Settings) -> str:
    assert settings.jwt_secret_key is not None
    return settings.jwt_secret_key.get_secret_value()


def sign(
    settings: Settings, claims: dict[str, Any], key: str | None = None, alg: str = "HS256"
) -> str:
    return jwt.encode(claims, key or secret(settings), algorithm=alg)


def b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def stored_refresh_hash(db: AsyncSession, session_id: uuid.UUID) -> str | None:
    value = await db.scalar(
        select(AuthSession.refresh_token_hash).where(AuthSession.id == session_id)
    )
    await db.rollback()
    return value


async def me(client: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await client.get("/api/users/me", headers={"Authorization": f"Bearer {access_token}"})


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/api/token/refresh", json={"refresh_token": refresh_token})


async def verify(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/token/verify", json={"token": token})


async def revoke(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/api/token/revoke", json={"refresh_token": refresh_token})


def assert_token_pair(body: dict[str, Any]) -> None:
    assert set(body) == {
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "refresh_expires_in",
    }
    assert body["token_type"] == "bearer"
    assert ACCESS_TTL_S - 5 <= body["expires_in"] <= ACCESS_TTL_S
    assert REFRESH_TTL_S - 5 <= body["refresh_expires_in"] <= REFRESH_TTL_S
    assert claims_of(body["access_token"])["type"] == "access"
    assert claims_of(body["refresh_token"])["type"] == "refresh"


# --- login --------------------------------------------------------------------------------------
async def test_login_with_json_returns_token_pair_and_stores_session(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")

    response = await client.post(
        "/api/token", json={"username": "alice", "password": alice.password}
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert_token_pair(body)
    sid = session_id(body["access_token"])
    sessions = await stored_sessions(db, alice.id)
    assert sessions[sid] is None
    assert len(sessions) == 2  # registration's and this login's
    assert await stored_refresh_hash(db, sid) == fingerprint(body["refresh_token"])
    assert (await me(client, body["access_token"])).json()["username"] == "alice"


@pytest.mark.parametrize("path", ["/api/token", "/api/token/"])
async def test_login_with_oauth2_password_form_returns_token_pair(
    client: httpx.AsyncClient, db: AsyncSession, path: str
) -> None:
    alice = await register(client, "alice")

    response = await client.post(
        path,
        data={"grant_type": "password", "username": "alice", "password": alice.password},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert_token_pair(body)
    assert session_id(body["access_token"]) in await stored_sessions(db, alice.id)


async def test_login_at_trailing_slash_path_answers_without_redirect(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")

    response = await client.post(
        "/api/token/", json={"username": "alice", "password": alice.password}
    )

    assert response.status_code == 200, response.text
    assert "location" not in response.headers
    body = response.json()
    assert_token_pair(body)
    assert (await stored_sessions(db, alice.id))[session_id(body["access_token"])] is None


@pytest.mark.parametrize(
    "login_as", ["alice@example.com", "Alice@Example.COM", "ALICE@EXAMPLE.COM"]
)
async def test_login_by_email_is_case_insensitive(
    client: httpx.AsyncClient, db: AsyncSession, login_as: str
) -> None:
    alice = await register(client, "alice", email="alice@example.com")

    response = await client.post(
        "/api/token", json={"username": login_as, "password": alice.password}
    )

    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["sub"] == str(alice.id)
    assert uuid.UUID(claims["sid"]) in await stored_sessions(db, alice.id)


async def test_unknown_user_and_wrong_password_get_the_same_401(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    before = await stored_sessions(db, alice.id)

    wrong_password = await client.post(
        "/api/token", json={"username": "alice", "password": "not the password"}
    )
    unknown_user = await client.post(
        "/api/token", json={"username": "nobody", "password": "not the password"}
    )
    unknown_email = await client.post(
        "/api/token", json={"username": "nobody@example.com", "password": PASSWORD}
    )

    bodies = [
        assert_problem(r, 401, "invalid_credentials")
        for r in (wrong_password, unknown_user, unknown_email)
    ]
    assert bodies[0] == bodies[1] == bodies[2]
    assert wrong_password.headers.get("www-authenticate") == unknown_user.headers.get(
        "www-authenticate"
    )
    assert await stored_sessions(db, alice.id) == before


async def test_login_form_with_another_grant_type_is_refused(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    before = await stored_sessions(db, alice.id)

    response = await client.post(
        "/api/token",
        data={"grant_type": "client_credentials", "username": "alice", "password": PASSWORD},
    )

    assert_problem(response, 400, "unsupported_grant_type")
    assert await stored_sessions(db, alice.id) == before


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"", "application/json"),
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b'{"username": "alice"}', "application/json"),
        (b'{"username": "alice", "password": "x", "role": "admin"}', "application/json"),
        (b"username=alice", "application/x-www-form-urlencoded"),
    ],
)
async def test_malformed_login_bodies_are_422_not_500(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    await register(client, "alice")

    response = await client.post(
        "/api/token", content=content, headers={"Content-Type": content_type}
    )

    body = assert_problem(response, 422, "validation_error")
    assert body["errors"]


async def test_token_claims_are_the_specified_ones(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    alice = await register(client, "alice")
    before = int(time.time())
    pair = await login(client, "alice")
    after = int(time.time())

    access = claims_of(pair["access_token"])
    refresh_claims = claims_of(pair["refresh_token"])
    assert set(access) == CLAIMS
    assert set(refresh_claims) == CLAIMS
    assert jwt.get_unverified_header(pair["access_token"])["alg"] == settings.jwt_algorithm
    for claims, type_, ttl in (
        (access, "access", ACCESS_TTL_S),
        (refresh_claims, "refresh", REFRESH_TTL_S),
    ):
        assert claims["sub"] == str(alice.id)
        assert claims["type"] == type_
        assert claims["iss"] == settings.jwt_issuer
        assert claims["aud"] == settings.jwt_audience
        assert before <= claims["iat"] <= after
        assert claims["exp"] - claims["iat"] == ttl
        assert isinstance(claims["jti"], str)
        assert claims["jti"]
    assert access["sid"] == refresh_claims["sid"]
    assert access["jti"] != refresh_claims["jti"]
    sid = uuid.UUID(access["sid"])
    assert (await stored_sessions(db, alice.id))[sid] is None
    # Verified for real, with the configured key, issuer and audience.
    jwt.decode(
        pair["access_token"],
        secret(settings),
        algorithms=[settings.jwt_algorithm],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )


async def test_each_login_opens_its_own_session(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")

    first = await login(client, "alice")
    second = await login(client, "alice")

    first_sid, second_sid = (
        session_id(first["access_token"]),
        session_id(second["access_token"]),
    )
    assert first_sid != second_sid
    sessions = await stored_sessions(db, alice.id)
    assert sessions[first_sid] is None
    assert sessions[second_sid] is None


# --- refresh ------------------------------------------------------------------------------------
async def test_refresh_rotates_the_pair_and_keeps_the_session(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    sid = session_id(alice.refresh_token)

    response = await refresh(client, alice.refresh_token)

    assert response.status_code == 200, response.text
    pair = response.json()
    assert_token_pair(pair)
    assert pair["refresh_token"] != alice.refresh_token
    assert pair["access_token"] != alice.access_token
    assert session_id(pair["refresh_token"]) == sid
    assert session_id(pair["access_token"]) == sid
    assert claims_of(pair["refresh_token"])["jti"] != claims_of(alice.refresh_token)["jti"]
    assert await stored_refresh_hash(db, sid) == fingerprint(pair["refresh_token"])
    assert (await stored_sessions(db, alice.id))[sid] is None
    assert (await me(client, pair["access_token"])).status_code == 200
    assert (await refresh(client, pair["refresh_token"])).status_code == 200


async def test_refresh_does_not_extend_the_session_lifetime(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client, "alice")

    pair = (await refresh(client, alice.refresh_token)).json()

    assert claims_of(pair["refresh_token"])["exp"] <= claims_of(alice.refresh_token)["exp"]


async def test_reusing_a_spent_refresh_token_revokes_the_whole_session(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    sid = session_id(alice.refresh_token)
    newest = (await refresh(client, alice.refresh_token)).json()

    replay = await refresh(client, alice.refresh_token)

    assert_problem(replay, 401, "token_reused")
    assert replay.headers["www-authenticate"].lower().startswith("bearer")
    assert (await stored_sessions(db, alice.id))[sid] is not None
    assert_problem(await refresh(client, newest["refresh_token"]), 401)
    assert_problem(await me(client, newest["access_token"]), 401, "token_revoked")
    assert_problem(await me(client, alice.access_token), 401, "token_revoked")
    assert_problem(await verify(client, newest["refresh_token"]), 401)


async def test_reusing_a_spent_refresh_token_leaves_other_sessions_alone(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    other = await login(client, "alice")
    await refresh(client, alice.refresh_token)

    assert_problem(await refresh(client, alice.refresh_token), 401, "token_reused")

    sessions = await stored_sessions(db, alice.id)
    assert sessions[session_id(alice.refresh_token)] is not None
    assert sessions[session_id(other["refresh_token"])] is None
    assert (await me(client, other["access_token"])).status_code == 200
    assert (await refresh(client, other["refresh_token"])).status_code == 200


async def test_concurrent_refreshes_with_the_same_token_yield_at_most_one_pair(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    sid = session_id(alice.refresh_token)

    responses = await asyncio.gather(*(refresh(client, alice.refresh_token) for _ in range(4)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) <= 1, statuses
    for response in responses:
        if response.status_code != 200:
            assert_problem(response, 401)
    winners = [r.json() for r in responses if r.status_code == 200]
    stored = await stored_refresh_hash(db, sid)
    assert stored != fingerprint(alice.refresh_token)
    if winners:
        assert stored == fingerprint(winners[0]["refresh_token"])


async def test_access_token_is_rejected_as_refresh_token(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    sid = session_id(alice.access_token)

    response = await refresh(client, alice.access_token)

    assert_problem(response, 401, "token_invalid")
    assert (await stored_sessions(db, alice.id))[sid] is None
    assert await stored_refresh_hash(db, sid) == fingerprint(alice.refresh_token)
    assert (await refresh(client, alice.refresh_token)).status_code == 200


async def test_refresh_token_is_rejected_as_access_token(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")

    response = await me(client, alice.refresh_token)

    assert_problem(response, 401, "token_invalid")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert (await stored_sessions(db, alice.id))[session_id(alice.refresh_token)] is None


async def test_expired_refresh_token_is_401(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    alice = await register(client, "alice")
    now = int(time.time())
    expired = sign(settings, {**claims_of(alice.refresh_token), "iat": now - 600, "exp": now - 60})

    assert_problem(await refresh(client, expired), 401, "token_expired")
    assert (await stored_sessions(db, alice.id))[session_id(alice.refresh_token)] is None


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 4096, "eyJhbGciOiJIUzI1NiJ9.e30."])
async def test_garbage_refresh_token_is_401(client: httpx.AsyncClient, token: str) -> None:
    assert_problem(await refresh(client, token), 401, "token_invalid")


async def test_refresh_token_of_a_revoked_session_is_401(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    assert (await revoke(client, alice.refresh_token)).status_code == 204

    assert_problem(await refresh(client, alice.refresh_token), 401, "token_revoked")
    assert (await stored_sessions(db, alice.id))[session_id(alice.refresh_token)] is not None


@pytest.mark.parametrize(
    "body",
    [{}, {"refresh_token": ""}, {"refresh_token": None}, {"refresh_token": "x", "extra": 1}],
)
async def test_malformed_refresh_bodies_are_422(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    assert_problem(await client.post("/api/token/refresh", json=body), 422, "validation_error")


# --- forged and broken access tokens ------------------------------------------------------------
Forge = Callable[[Settings, dict[str, Any], str], str]


def _wrong_signature(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, claims, key=OTHER_KEY)


def _tampered_payload(_settings: Settings, claims: dict[str, Any], token: str) -> str:
    header, _payload, signature = token.split(".")
    return f"{header}.{b64url({**claims, 'sub': str(int(claims['sub']) + 1)})}.{signature}"


def _alg_none(_settings: Settings, claims: dict[str, Any], _: str) -> str:
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."


def _alg_none_keeping_signature(_settings: Settings, claims: dict[str, Any], token: str) -> str:
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}.{token.split('.')[2]}"


def _other_algorithm(settings: Settings, claims: dict[str, Any], _: str) -> str:
    with warnings.catch_warnings():  # the test key is short for HS512; that is not the point
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return sign(settings, claims, alg="HS512")


def _wrong_audience(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, {**claims, "aud": "someone-else"})


def _wrong_issuer(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, {**claims, "iss": "someone-else"})


def _wrong_type(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, {**claims, "type": "id"})


def _without(claim: str) -> Forge:
    def forge(settings: Settings, claims: dict[str, Any], _: str) -> str:
        return sign(settings, {k: v for k, v in claims.items() if k != claim})

    forge.__name__ = f"without_{claim}"
    return forge


def _non_numeric_subject(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, {**claims, "sub": "alice"})


def _bad_session_id(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, {**claims, "sid": "not-a-uuid"})


def _unknown_session(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, {**claims, "sid": str(uuid.uuid4())})


def _other_users_subject(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, {**claims, "sub": str(int(claims["sub"]) + 1000)})


def _huge_subject(settings: Settings, claims: dict[str, Any], _: str) -> str:
    return sign(settings, {**claims, "sub": str(2**70)})


FORGERIES: list[tuple[Forge, tuple[str, ...]]] = [
    (_wrong_signature, ("token_invalid",)),
    (_tampered_payload, ("token_invalid",)),
    (_alg_none, ("token_invalid",)),
    (_alg_none_keeping_signature, ("token_invalid",)),
    (_other_algorithm, ("token_invalid",)),
    (_wrong_audience, ("token_invalid",)),
    (_wrong_issuer, ("token_invalid",)),
    (_wrong_type, ("token_invalid",)),
    *((_without(c), ("token_invalid",)) for c in sorted(CLAIMS)),
    (_non_numeric_subject, ("token_invalid",)),
    (_bad_session_id, ("token_invalid",)),
    (_unknown_session, ("token_invalid", "token_revoked")),
    (_other_users_subject, ("token_invalid", "token_revoked")),
    (_huge_subject, ("token_invalid", "token_revoked")),
]


@pytest.mark.parametrize(
    ("forge", "codes"), FORGERIES, ids=[forge.__name__.strip("_") for forge, _ in FORGERIES]
)
async def test_forged_access_tokens_are_401_never_500(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    forge: Forge,
    codes: tuple[str, ...],
) -> None:
    alice = await register(client, "alice")
    token = forge(settings, claims_of(alice.access_token), alice.access_token)

    response = await me(client, token)

    assert_problem(response, 401, *codes)
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert_problem(await verify(client, token), 401, *codes)
    assert (await stored_sessions(db, alice.id))[session_id(alice.access_token)] is None


async def test_token_crafted_with_the_configured_key_and_claims_is_accepted(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The control for the forgeries above: only what they change makes them fail."""
    alice = await register(client, "alice")
    now = int(time.time())
    token = sign(settings, {**claims_of(alice.access_token), "iat": now, "exp": now + 60})

    response = await me(client, token)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == alice.id


async def test_expired_access_token_is_401_token_expired(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client, "alice")
    now = int(time.time())
    expired = sign(settings, {**claims_of(alice.access_token), "iat": now - 600, "exp": now - 1})

    response = await me(client, expired)

    assert_problem(response, 401, "token_expired")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert (await me(client, alice.access_token)).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer ...",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.",
        "Bearer " + "x" * 10_000,
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "bearer",
    ],
)
async def test_missing_or_malformed_authorization_header_is_401(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    await register(client, "alice")
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await client.get("/api/users/me", headers=headers)

    assert_problem(response, 401, "not_authenticated", "token_invalid")
    assert response.headers["www-authenticate"].lower().startswith("bearer")


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    alice = await register(client, "alice")

    response = await client.get(
        "/api/users/me", headers={"Authorization": f"bearer {alice.access_token}"}
    )

    assert response.status_code == 200, response.text


# --- verify -------------------------------------------------------------------------------------
async def test_verify_accepts_live_access_and_refresh_tokens(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")

    for token in (alice.access_token, alice.refresh_token):
        response = await verify(client, token)
        assert response.status_code == 200, response.text
        assert response.json() == {}
    # Verifying spends nothing.
    assert await stored_refresh_hash(db, session_id(alice.refresh_token)) == fingerprint(
        alice.refresh_token
    )
    assert (await refresh(client, alice.refresh_token)).status_code == 200


async def test_verify_rejects_tokens_of_a_revoked_session(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    assert (await revoke(client, alice.refresh_token)).status_code == 204

    assert_problem(await verify(client, alice.access_token), 401, "token_revoked")
    assert_problem(await verify(client, alice.refresh_token), 401, "token_revoked")
    assert (await stored_sessions(db, alice.id))[session_id(alice.refresh_token)] is not None


async def test_verify_rejects_a_spent_refresh_token_but_accepts_its_successor(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client, "alice")
    newest = (await refresh(client, alice.refresh_token)).json()

    assert_problem(await verify(client, alice.refresh_token), 401)
    assert (await verify(client, newest["refresh_token"])).status_code == 200
    assert (await verify(client, newest["access_token"])).status_code == 200


@pytest.mark.parametrize("type_", ["access", "refresh"])
async def test_verify_rejects_expired_tokens(
    client: httpx.AsyncClient, settings: Settings, type_: str
) -> None:
    alice = await register(client, "alice")
    token = alice.access_token if type_ == "access" else alice.refresh_token
    now = int(time.time())
    expired = sign(settings, {**claims_of(token), "iat": now - 600, "exp": now - 1})

    assert_problem(await verify(client, expired), 401, "token_expired")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 4096, "Bearer x"])
async def test_verify_rejects_garbage(client: httpx.AsyncClient, token: str) -> None:
    assert_problem(await verify(client, token), 401, "token_invalid")


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": "x" * 4097}, {"token": 1}])
async def test_malformed_verify_bodies_are_422(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    assert_problem(await client.post("/api/token/verify", json=body), 422, "validation_error")


# --- revoke -------------------------------------------------------------------------------------
async def test_revoke_ends_the_session_and_its_access_token_at_once(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    assert (await me(client, alice.access_token)).status_code == 200
    sid = session_id(alice.refresh_token)

    response = await revoke(client, alice.refresh_token)

    assert response.status_code == 204
    assert response.content == b""
    assert (await stored_sessions(db, alice.id))[sid] is not None
    assert_problem(await me(client, alice.access_token), 401, "token_revoked")
    assert_problem(await refresh(client, alice.refresh_token), 401, "token_revoked")


async def test_revoke_after_rotation_ends_every_token_of_the_session(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    newest = (await refresh(client, alice.refresh_token)).json()

    assert (await revoke(client, newest["refresh_token"])).status_code == 204

    assert (await stored_sessions(db, alice.id))[session_id(alice.refresh_token)] is not None
    for token in (alice.access_token, newest["access_token"]):
        assert_problem(await me(client, token), 401, "token_revoked")
    assert_problem(await refresh(client, newest["refresh_token"]), 401)


async def test_revoke_leaves_other_sessions_alive(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    other = await login(client, "alice")

    assert (await revoke(client, alice.refresh_token)).status_code == 204

    sessions = await stored_sessions(db, alice.id)
    assert sessions[session_id(alice.refresh_token)] is not None
    assert sessions[session_id(other["refresh_token"])] is None
    assert (await me(client, other["access_token"])).status_code == 200


async def test_revoke_twice_is_harmless(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client, "alice")
    sid = session_id(alice.refresh_token)
    assert (await revoke(client, alice.refresh_token)).status_code == 204
    revoked_at = (await stored_sessions(db, alice.id))[sid]

    assert (await revoke(client, alice.refresh_token)).status_code == 204

    assert (await stored_sessions(db, alice.id))[sid] == revoked_at


async def test_revoke_with_an_access_token_is_refused_and_ends_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")

    assert_problem(await revoke(client, alice.access_token), 401, "token_invalid")

    assert (await stored_sessions(db, alice.id))[session_id(alice.access_token)] is None
    assert (await me(client, alice.access_token)).status_code == 200


async def test_revoke_with_a_forged_refresh_token_ends_nothing(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    alice = await register(client, "alice")
    forged = sign(settings, claims_of(alice.refresh_token), key=OTHER_KEY)

    assert_problem(await revoke(client, forged), 401, "token_invalid")
    assert_problem(await revoke(client, "garbage"), 401, "token_invalid")

    assert (await stored_sessions(db, alice.id))[session_id(alice.refresh_token)] is None
    assert (await me(client, alice.access_token)).status_code == 200


async def test_token_of_one_user_cannot_revoke_another_users_session(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    """A refresh token names its session; a sid pointing at someone else's session is ignored."""
    alice = await register(client, "alice")
    bob: Account = await register(client, "bob")
    crossed = sign(
        settings, {**claims_of(bob.refresh_token), "sid": claims_of(alice.refresh_token)["sid"]}
    )

    await revoke(client, crossed)

    assert (await stored_sessions(db, alice.id))[session_id(alice.refresh_token)] is None
    assert (await me(client, alice.access_token)).status_code == 200
