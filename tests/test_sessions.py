"""Sessions, password changes, deactivation and deletion: when a user's tokens must stop working
(SPEC 4 "Users", 5 and 6)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import User
from tests.factories import (
    PASSWORD,
    Account,
    bearer,
    login,
    make_admin,
    register,
    session_id,
    stored_sessions,
)
from tests.problems import assert_problem

NEW_PASSWORD = "a brand new passphrase"
SESSION_FIELDS = {"id", "created_at", "last_used_at", "user_agent", "ip", "current"}


# --- helpers ------------------------------------------------------------------------------------


async def stored_password_hash(db: AsyncSession, user_id: int) -> str | None:
    value = await db.scalar(select(User.password_hash).where(User.id == user_id))
    await db.rollback()
    return value


async def me(client: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await client.get("/api/users/me", headers=bearer(access_token))


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/api/token/refresh", json={"refresh_token": refresh_token})


async def try_login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/api/token", json={"username": username, "password": password})


async def change_password(
    client: httpx.AsyncClient, access_token: str, current: str, new: str
) -> httpx.Response:
    return await client.post(
        "/api/users/me/password",
        json={"current_password": current, "new_password": new},
        headers=bearer(access_token),
    )


async def assert_tokens_dead(
    client: httpx.AsyncClient, access_token: str, refresh_token: str, *access_codes: str
) -> None:
    assert_problem(await me(client, access_token), 401, *access_codes)
    assert_problem(await refresh(client, refresh_token), 401)
    verified = await client.post("/api/token/verify", json={"token": access_token})
    assert_problem(verified, 401)


# --- listing ------------------------------------------------------------------------------------
async def test_list_sessions_marks_only_the_callers_session_current(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    laptop = await login(client, "alice")
    bob = await register(client, "bob")

    response = await client.get("/api/users/me/sessions", headers=bearer(laptop["access_token"]))

    assert response.status_code == 200, response.text
    sessions = response.json()
    assert all(set(s) == SESSION_FIELDS for s in sessions)
    by_id = {uuid.UUID(s["id"]): s for s in sessions}
    assert set(by_id) == set(await stored_sessions(db, alice.id))
    assert session_id(bob.access_token) not in by_id
    assert by_id[session_id(laptop["access_token"])]["current"] is True
    assert by_id[session_id(alice.access_token)]["current"] is False
    assert [s["current"] for s in sessions].count(True) == 1
    current = by_id[session_id(laptop["access_token"])]
    assert current["user_agent"].startswith("python-httpx")
    assert current["created_at"]
    assert current["last_used_at"]


async def test_list_sessions_from_the_other_session_flips_current(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client, "alice")
    laptop = await login(client, "alice")

    response = await client.get("/api/users/me/sessions", headers=alice.headers)

    current = {uuid.UUID(s["id"]): s["current"] for s in response.json()}
    assert current == {
        session_id(alice.access_token): True,
        session_id(laptop["access_token"]): False,
    }


async def test_list_sessions_omits_ended_sessions(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    laptop = await login(client, "alice")
    revoked = await client.post(
        "/api/token/revoke", json={"refresh_token": laptop["refresh_token"]}
    )
    assert revoked.status_code == 204

    response = await client.get("/api/users/me/sessions", headers=alice.headers)

    assert response.status_code == 200
    assert [uuid.UUID(s["id"]) for s in response.json()] == [session_id(alice.access_token)]
    assert (await stored_sessions(db, alice.id))[session_id(laptop["access_token"])] is not None


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_sessions_need_authentication(client: httpx.AsyncClient, method: str) -> None:
    path = "/api/users/me/sessions" if method == "GET" else f"/api/users/me/sessions/{uuid.uuid4()}"

    response = await client.request(method, path)

    assert_problem(response, 401, "not_authenticated")


# --- ending sessions ----------------------------------------------------------------------------
async def test_delete_session_ends_it_and_its_tokens(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    laptop = await login(client, "alice")
    laptop_sid = session_id(laptop["access_token"])

    response = await client.delete(f"/api/users/me/sessions/{laptop_sid}", headers=alice.headers)

    assert response.status_code == 204
    assert response.content == b""
    sessions = await stored_sessions(db, alice.id)
    assert sessions[laptop_sid] is not None
    assert sessions[session_id(alice.access_token)] is None
    await assert_tokens_dead(
        client, laptop["access_token"], laptop["refresh_token"], "token_revoked"
    )
    assert (await me(client, alice.access_token)).status_code == 200


async def test_delete_own_current_session_logs_the_caller_out(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    sid = session_id(alice.access_token)

    response = await client.delete(f"/api/users/me/sessions/{sid}", headers=alice.headers)

    assert response.status_code == 204
    assert (await stored_sessions(db, alice.id))[sid] is not None
    await assert_tokens_dead(client, alice.access_token, alice.refresh_token, "token_revoked")


async def test_other_user_cannot_delete_my_session(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    mallory = await register(client, "mallory")
    alice_sid = session_id(alice.access_token)

    response = await client.delete(f"/api/users/me/sessions/{alice_sid}", headers=mallory.headers)

    assert_problem(response, 404, "session_not_found")
    assert (await stored_sessions(db, alice.id))[alice_sid] is None
    assert (await me(client, alice.access_token)).status_code == 200
    assert (await refresh(client, alice.refresh_token)).status_code == 200
    # Mallory's own session is untouched as well.
    assert (await me(client, mallory.access_token)).status_code == 200


async def test_delete_unknown_session_is_404(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client, "alice")
    before = await stored_sessions(db, alice.id)

    response = await client.delete(f"/api/users/me/sessions/{uuid.uuid4()}", headers=alice.headers)

    assert_problem(response, 404, "session_not_found")
    assert await stored_sessions(db, alice.id) == before


async def test_delete_already_ended_session_is_404(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    laptop = await login(client, "alice")
    laptop_sid = session_id(laptop["access_token"])
    path = f"/api/users/me/sessions/{laptop_sid}"
    assert (await client.delete(path, headers=alice.headers)).status_code == 204
    revoked_at = (await stored_sessions(db, alice.id))[laptop_sid]

    assert_problem(await client.delete(path, headers=alice.headers), 404, "session_not_found")
    assert (await stored_sessions(db, alice.id))[laptop_sid] == revoked_at


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "0" * 33, "%20"])
async def test_delete_session_with_bad_uuid_is_422(
    client: httpx.AsyncClient, db: AsyncSession, bad_id: str
) -> None:
    alice = await register(client, "alice")

    response = await client.delete(f"/api/users/me/sessions/{bad_id}", headers=alice.headers)

    body = assert_problem(response, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["path", "session_id"]
    assert (await stored_sessions(db, alice.id))[session_id(alice.access_token)] is None


# --- password change ----------------------------------------------------------------------------
async def test_change_password_ends_other_sessions_and_keeps_the_current_one(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    laptop = await login(client, "alice")
    phone = await login(client, "alice")
    old_hash = await stored_password_hash(db, alice.id)

    response = await change_password(client, laptop["access_token"], PASSWORD, NEW_PASSWORD)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert await stored_password_hash(db, alice.id) != old_hash
    sessions = await stored_sessions(db, alice.id)
    assert sessions[session_id(laptop["access_token"])] is None
    assert sessions[session_id(alice.access_token)] is not None
    assert sessions[session_id(phone["access_token"])] is not None
    await assert_tokens_dead(client, alice.access_token, alice.refresh_token, "token_revoked")
    await assert_tokens_dead(client, phone["access_token"], phone["refresh_token"], "token_revoked")
    assert (await me(client, laptop["access_token"])).status_code == 200
    assert (await refresh(client, laptop["refresh_token"])).status_code == 200


async def test_after_password_change_only_the_new_password_logs_in(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client, "alice")
    changed = await change_password(client, alice.access_token, PASSWORD, NEW_PASSWORD)
    assert changed.status_code == 204

    assert (await try_login(client, "alice", NEW_PASSWORD)).status_code == 200
    assert (await try_login(client, alice.email, NEW_PASSWORD)).status_code == 200
    assert_problem(await try_login(client, "alice", PASSWORD), 401, "invalid_credentials")


async def test_change_password_with_wrong_current_password_is_400_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    laptop = await login(client, "alice")
    old_hash = await stored_password_hash(db, alice.id)
    before = await stored_sessions(db, alice.id)

    response = await change_password(client, alice.access_token, "not the password", NEW_PASSWORD)

    assert_problem(response, 400, "wrong_password")
    assert await stored_password_hash(db, alice.id) == old_hash
    assert await stored_sessions(db, alice.id) == before
    assert all(revoked_at is None for revoked_at in before.values())
    assert (await me(client, laptop["access_token"])).status_code == 200
    assert (await try_login(client, "alice", PASSWORD)).status_code == 200
    assert_problem(await try_login(client, "alice", NEW_PASSWORD), 401, "invalid_credentials")


async def test_another_users_token_changes_only_their_own_password(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob", password="bobs own password")
    alice_hash = await stored_password_hash(db, alice.id)
    bob_hash = await stored_password_hash(db, bob.id)
    alice_sessions = await stored_sessions(db, alice.id)

    # Knowing Alice's password does not help Bob: the check is against the caller's own.
    refused = await change_password(client, bob.access_token, alice.password, "mallory was here")
    assert_problem(refused, 400, "wrong_password")
    changed = await change_password(client, bob.access_token, bob.password, NEW_PASSWORD)

    assert changed.status_code == 204
    assert await stored_password_hash(db, alice.id) == alice_hash
    assert await stored_password_hash(db, bob.id) != bob_hash
    assert await stored_sessions(db, alice.id) == alice_sessions
    assert (await me(client, alice.access_token)).status_code == 200
    assert (await try_login(client, "alice", PASSWORD)).status_code == 200
    assert (await try_login(client, "bob", NEW_PASSWORD)).status_code == 200
    assert_problem(await try_login(client, "alice", NEW_PASSWORD), 401, "invalid_credentials")


async def test_change_password_needs_authentication(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    old_hash = await stored_password_hash(db, alice.id)

    response = await client.post(
        "/api/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )

    assert_problem(response, 401, "not_authenticated")
    assert await stored_password_hash(db, alice.id) == old_hash


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"current_password": PASSWORD},
        {"current_password": PASSWORD, "new_password": "short"},
        {"current_password": PASSWORD, "new_password": "x" * 129},
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "role": "admin"},
    ],
)
async def test_invalid_password_change_bodies_are_422_and_change_nothing(
    client: httpx.AsyncClient, db: AsyncSession, body: dict[str, Any]
) -> None:
    alice = await register(client, "alice")
    old_hash = await stored_password_hash(db, alice.id)

    response = await client.post("/api/users/me/password", json=body, headers=alice.headers)

    assert_problem(response, 422, "validation_error")
    assert await stored_password_hash(db, alice.id) == old_hash
    role = await db.scalar(select(User.role).where(User.id == alice.id))
    await db.rollback()
    assert role == "user"


# --- deactivated and deleted users --------------------------------------------------------------
async def test_user_deactivated_by_admin_loses_access_and_refresh_at_once(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await make_admin(db, await register(client, "root"))
    alice = await register(client, "alice")
    laptop = await login(client, "alice")
    assert (await me(client, alice.access_token)).status_code == 200

    response = await client.patch(
        f"/api/users/{alice.id}", json={"is_active": False}, headers=admin.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False
    is_active = await db.scalar(select(User.is_active).where(User.id == alice.id))
    await db.rollback()
    assert is_active is False
    sessions = await stored_sessions(db, alice.id)
    assert sessions
    assert all(revoked_at is not None for revoked_at in sessions.values())
    for pair in (
        (alice.access_token, alice.refresh_token),
        (laptop["access_token"], laptop["refresh_token"]),
    ):
        await assert_tokens_dead(client, *pair, "token_revoked", "user_inactive")
    assert_problem(await try_login(client, "alice", PASSWORD), 401)
    assert (await me(client, admin.access_token)).status_code == 200


async def test_reactivated_user_does_not_get_old_sessions_back(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await make_admin(db, await register(client, "root"))
    alice = await register(client, "alice")
    path = f"/api/users/{alice.id}"
    off = await client.patch(path, json={"is_active": False}, headers=admin.headers)
    assert off.status_code == 200

    on = await client.patch(path, json={"is_active": True}, headers=admin.headers)

    assert on.status_code == 200
    assert (await stored_sessions(db, alice.id))[session_id(alice.access_token)] is not None
    await assert_tokens_dead(client, alice.access_token, alice.refresh_token, "token_revoked")
    assert (await try_login(client, "alice", PASSWORD)).status_code == 200


async def test_user_deactivated_in_the_database_is_refused_at_once(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    assert (await me(client, alice.access_token)).status_code == 200
    await db.execute(update(User).where(User.id == alice.id).values(is_active=False))
    await db.commit()

    response = await me(client, alice.access_token)

    assert_problem(response, 401, "user_inactive")
    assert_problem(
        await refresh(client, alice.refresh_token), 401, "user_inactive", "token_revoked"
    )
    assert_problem(await client.post("/api/token/verify", json={"token": alice.refresh_token}), 401)
    assert_problem(await try_login(client, "alice", PASSWORD), 401)
    # The refresh attempt of an inactive user ends that session.
    assert (await stored_sessions(db, alice.id))[session_id(alice.refresh_token)] is not None


async def test_deleted_user_tokens_are_401(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client, "alice")
    laptop = await login(client, "alice")

    response = await client.delete("/api/users/me", headers=alice.headers)

    assert response.status_code == 204, response.text
    assert await db.scalar(select(User.id).where(User.id == alice.id)) is None
    assert await stored_sessions(db, alice.id) == {}
    for pair in (
        (alice.access_token, alice.refresh_token),
        (laptop["access_token"], laptop["refresh_token"]),
    ):
        await assert_tokens_dead(client, *pair, "token_revoked")
    assert_problem(await try_login(client, "alice", PASSWORD), 401, "invalid_credentials")


async def test_deleted_user_tokens_do_not_reach_a_new_account_with_the_same_name(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice: Account = await register(client, "alice")
    assert (await client.delete("/api/users/me", headers=alice.headers)).status_code == 204

    again = await register(client, "alice")

    # SQLite may hand the freed id to the new account; the old token's session still died.
    assert_problem(await me(client, alice.access_token), 401)
    assert (await me(client, again.access_token)).json()["id"] == again.id
    assert session_id(alice.access_token) not in await stored_sessions(db, again.id)
