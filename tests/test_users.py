"""Accounts as their owners see them: registration, the profile, and public profiles."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuthSession, Post, User
from tests.factories import PASSWORD, USER_OUT_KEYS, create_post, register
from tests.problems import assert_problem

PUBLIC_KEYS = {"id", "username", "full_name", "bio", "created_at"}
TOKEN_PAIR_KEYS = {
    "access_token",
    "refresh_token",
    "token_type",
    "expires_in",
    "refresh_expires_in",
}
SECRET_KEYS = {"password", "password_hash", "hashed_password"}


def assert_no_secrets(response: httpx.Response, password: str = PASSWORD) -> None:
    """Neither a password nor its hash appears anywhere in the response."""

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            assert not SECRET_KEYS & set(value), value
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(response.json())
    assert password not in response.text
    assert "$argon2" not in response.text


async def stored_user(db: AsyncSession, user_id: int) -> User | None:
    """The row as it is now, not as this session last saw it."""
    return await db.scalar(
        select(User).where(User.id == user_id).execution_options(populate_existing=True)
    )


async def user_count(db: AsyncSession) -> int:
    return await db.scalar(select(func.count()).select_from(User)) or 0


def user_snapshot(user: User | None) -> dict[str, Any]:
    assert user is not None
    return {
        "email": user.email,
        "username": user.username,
        "full_name": user.full_name,
        "bio": user.bio,
        "role": user.role,
        "is_active": user.is_active,
        "is_verified": user.is_verified,
        "password_hash": user.password_hash,
    }


def registration(**fields: Any) -> dict[str, Any]:
    return {
        "email": "alice@example.com",
        "username": "alice",
        "password": PASSWORD,
        **fields,
    }


# --- registration -----------------------------------------------------------------------------
async def test_register_answers_201_with_user_tokens_and_location(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    response = await client.post(
        "/api/users",
        json=registration(full_name="Alice Liddell", bio="Down the rabbit hole."),
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"user", "tokens"}
    user = body["user"]
    assert set(user) == USER_OUT_KEYS
    assert user["email"] == "alice@example.com"
    assert user["username"] == "alice"
    assert user["full_name"] == "Alice Liddell"
    assert user["bio"] == "Down the rabbit hole."
    assert user["role"] == "user"
    assert user["is_active"] is True
    assert user["is_verified"] is False
    assert set(body["tokens"]) == TOKEN_PAIR_KEYS
    assert body["tokens"]["token_type"] == "bearer"
    assert response.headers["location"] == f"/api/users/{user['id']}"
    assert_no_secrets(response)

    stored = await stored_user(db, user["id"])
    assert stored is not None
    assert stored.username == "alice"
    assert stored.full_name == "Alice Liddell"
    assert stored.role == "user"
    assert stored.password_hash != PASSWORD
    assert stored.password_hash.startswith("$argon2id$")
    sessions = await db.scalar(
        select(func.count()).select_from(AuthSession).where(AuthSession.user_id == user["id"])
    )
    assert sessions == 1


async def test_register_tokens_work_for_the_new_user(client: httpx.AsyncClient) -> None:
    alice = await register(client)

    response = await client.get("/api/users/me", headers=alice.headers)

    assert response.status_code == 200
    assert response.json()["id"] == alice.id


async def test_register_stores_email_lower_case(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    response = await client.post("/api/users", json=registration(email="Alice@Example.COM"))

    assert response.status_code == 201, response.text
    assert response.json()["user"]["email"] == "alice@example.com"
    stored = await stored_user(db, response.json()["user"]["id"])
    assert stored is not None
    assert stored.email == "alice@example.com"


async def test_register_with_taken_email_is_409_email_taken(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    await register(client, username="alice", email="alice@example.com")

    response = await client.post(
        "/api/users", json=registration(username="alice2", email="alice@example.com")
    )

    assert_problem(response, 409, "email_taken")
    assert await user_count(db) == 1


async def test_register_with_email_differing_only_in_case_is_409_email_taken(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    await register(client, username="alice", email="alice@example.com")

    response = await client.post(
        "/api/users", json=registration(username="alice2", email="ALICE@example.Com")
    )

    assert_problem(response, 409, "email_taken")
    assert await user_count(db) == 1


async def test_register_with_taken_username_is_409_username_taken(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    await register(client, username="alice", email="alice@example.com")

    response = await client.post(
        "/api/users", json=registration(username="alice", email="other@example.com")
    )

    assert_problem(response, 409, "username_taken")
    assert await user_count(db) == 1


@pytest.mark.parametrize(
    "username",
    ["ab", "Alice", "a b", "a" * 33, "al-ice", "alice!", "", "élise"],
)
async def test_register_rejects_username_outside_pattern(
    client: httpx.AsyncClient, db: AsyncSession, username: str
) -> None:
    response = await client.post("/api/users", json=registration(username=username))

    assert_problem(response, 422, "validation_error")
    assert await user_count(db) == 0


@pytest.mark.parametrize("username", ["abc", "a" * 32, "al_ice_99"])
async def test_register_accepts_username_inside_pattern(
    client: httpx.AsyncClient, db: AsyncSession, username: str
) -> None:
    response = await client.post("/api/users", json=registration(username=username))

    assert response.status_code == 201, response.text
    stored = await stored_user(db, response.json()["user"]["id"])
    assert stored is not None
    assert stored.username == username


@pytest.mark.parametrize("length", [0, 7, 129, 1000])
async def test_register_rejects_password_outside_8_to_128_characters(
    client: httpx.AsyncClient, db: AsyncSession, length: int
) -> None:
    response = await client.post("/api/users", json=registration(password="p" * length))

    assert_problem(response, 422, "validation_error")
    assert await user_count(db) == 0


@pytest.mark.parametrize("length", [8, 128])
async def test_register_accepts_password_of_8_and_128_characters(
    client: httpx.AsyncClient, length: int
) -> None:
    password = "p" * (length - 1) + "!"
    response = await client.post("/api/users", json=registration(password=password))

    assert response.status_code == 201, response.text
    login = await client.post("/api/token", json={"username": "alice", "password": password})
    assert login.status_code == 200, login.text


async def test_register_never_truncates_the_password(client: httpx.AsyncClient) -> None:
    password = "x" * 99 + "a"
    almost = "x" * 99 + "b"
    await register(client, username="alice", password=password)

    wrong = await client.post("/api/token", json={"username": "alice", "password": almost})
    right = await client.post("/api/token", json={"username": "alice", "password": password})

    assert_problem(wrong, 401)
    assert right.status_code == 200, right.text


@pytest.mark.parametrize(
    "extra",
    [
        {"role": "admin"},
        {"is_verified": True},
        {"is_active": False},
        {"id": 999},
        {"password_hash": "$argon2id$forged"},
    ],
)
async def test_register_rejects_unknown_fields_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession, extra: dict[str, Any]
) -> None:
    response = await client.post("/api/users", json=registration(**extra))

    assert_problem(response, 422, "validation_error")
    assert await user_count(db) == 0


@pytest.mark.parametrize(
    "email", ["not-an-email", "alice@", "@example.com", "alice example@x.com", ""]
)
async def test_register_rejects_invalid_email(
    client: httpx.AsyncClient, db: AsyncSession, email: str
) -> None:
    response = await client.post("/api/users", json=registration(email=email))

    assert_problem(response, 422, "validation_error")
    assert await user_count(db) == 0


@pytest.mark.parametrize("missing", ["email", "username", "password"])
async def test_register_requires_email_username_and_password(
    client: httpx.AsyncClient, db: AsyncSession, missing: str
) -> None:
    body = registration()
    del body[missing]

    response = await client.post("/api/users", json=body)

    assert_problem(response, 422, "validation_error")
    assert await user_count(db) == 0


# --- /api/users/me ----------------------------------------------------------------------------
async def test_get_me_returns_user_out_without_secrets(client: httpx.AsyncClient) -> None:
    alice = await register(client, full_name="Alice")

    response = await client.get("/api/users/me", headers=alice.headers)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == USER_OUT_KEYS
    assert body["id"] == alice.id
    assert body["email"] == alice.email
    assert body["username"] == alice.username
    assert body["full_name"] == "Alice"
    assert_no_secrets(response)


async def test_get_me_without_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/users/me")

    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_patch_me_changes_full_name_bio_and_username(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)

    response = await client.patch(
        "/api/users/me",
        json={
            "full_name": "Alice Liddell",
            "bio": "Curiouser and curiouser.",
            "username": "liddell",
        },
        headers=alice.headers,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == USER_OUT_KEYS
    assert body["full_name"] == "Alice Liddell"
    assert body["bio"] == "Curiouser and curiouser."
    assert body["username"] == "liddell"
    assert_no_secrets(response)
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert stored.full_name == "Alice Liddell"
    assert stored.bio == "Curiouser and curiouser."
    assert stored.username == "liddell"
    assert stored.email == alice.email


@pytest.mark.parametrize("username", ["al", "Alice", "a b", "a" * 33])
async def test_patch_me_rejects_invalid_username_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, username: str
) -> None:
    alice = await register(client)
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch(
        "/api/users/me", json={"username": username, "bio": "new"}, headers=alice.headers
    )

    assert_problem(response, 422, "validation_error")
    assert user_snapshot(await stored_user(db, alice.id)) == before


async def test_patch_me_leaves_absent_fields_alone(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, full_name="Alice", bio="Hello")

    response = await client.patch("/api/users/me", json={"bio": "Bye"}, headers=alice.headers)

    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "Alice"
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert (stored.full_name, stored.bio) == ("Alice", "Bye")


async def test_patch_me_new_username_logs_in(client: httpx.AsyncClient) -> None:
    alice = await register(client, username="alice")

    response = await client.patch(
        "/api/users/me", json={"username": "liddell"}, headers=alice.headers
    )
    assert response.status_code == 200, response.text

    old = await client.post("/api/token", json={"username": "alice", "password": PASSWORD})
    new = await client.post("/api/token", json={"username": "liddell", "password": PASSWORD})
    assert_problem(old, 401)
    assert new.status_code == 200, new.text


async def test_patch_me_email_change_waits_as_pending_until_verified(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    await db.execute(update(User).where(User.id == alice.id).values(is_verified=True))
    await db.commit()

    response = await client.patch(
        "/api/users/me",
        json={"email": "New.Alice@Example.com", "current_password": PASSWORD},
        headers=alice.headers,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["email"], body["pending_email"]) == (alice.email, "new.alice@example.com")
    assert body["is_verified"] is True
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert (stored.email, stored.pending_email) == (alice.email, "new.alice@example.com")
    assert stored.is_verified is True
    me = await client.get("/api/users/me", headers=alice.headers)
    assert (me.json()["email"], me.json()["pending_email"]) == (
        alice.email,
        "new.alice@example.com",
    )


async def test_patch_me_email_without_current_password_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch(
        "/api/users/me",
        json={"email": "stolen@example.org", "bio": "mine now"},
        headers=alice.headers,
    )

    assert_problem(response, 422, "validation_error")
    assert "current_password" in response.json()["detail"]
    assert user_snapshot(await stored_user(db, alice.id)) == before
    assert (await stored_user(db, alice.id)).pending_email is None  # type: ignore[union-attr]


async def test_patch_me_email_with_wrong_password_is_400_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch(
        "/api/users/me",
        json={"email": "stolen@example.org", "current_password": "a guess", "bio": "mine"},
        headers=alice.headers,
    )

    assert_problem(response, 400, "wrong_password")
    assert user_snapshot(await stored_user(db, alice.id)) == before
    assert (await stored_user(db, alice.id)).pending_email is None  # type: ignore[union-attr]


async def test_patch_me_without_email_needs_no_password(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)

    response = await client.patch("/api/users/me", json={"bio": "Tea."}, headers=alice.headers)

    assert response.status_code == 200, response.text
    assert (await stored_user(db, alice.id)).bio == "Tea."  # type: ignore[union-attr]


async def test_patch_me_same_email_keeps_is_verified_and_drops_a_pending_change(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    await db.execute(update(User).where(User.id == alice.id).values(is_verified=True))
    await db.commit()
    pending = await client.patch(
        "/api/users/me",
        json={"email": "elsewhere@example.org", "current_password": PASSWORD},
        headers=alice.headers,
    )
    assert pending.json()["pending_email"] == "elsewhere@example.org"

    response = await client.patch(
        "/api/users/me",
        json={"email": alice.email.upper(), "current_password": PASSWORD},
        headers=alice.headers,
    )

    assert response.status_code == 200, response.text
    assert response.json()["is_verified"] is True
    assert response.json()["pending_email"] is None
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert (stored.email, stored.pending_email, stored.is_verified) == (alice.email, None, True)


async def test_patch_me_to_taken_username_is_409_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, username="alice")
    await register(client, username="bob")
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch(
        "/api/users/me", json={"username": "bob", "full_name": "Bob?"}, headers=alice.headers
    )

    assert_problem(response, 409, "username_taken")
    assert user_snapshot(await stored_user(db, alice.id)) == before


@pytest.mark.parametrize("email", ["bob@example.com", "BOB@Example.com"])
async def test_patch_me_to_taken_email_answers_as_for_a_free_one(
    client: httpx.AsyncClient, db: AsyncSession, email: str
) -> None:
    """No oracle of who has an account: the change waits as pending either way, and the link
    is what is refused (see test_email_flows)."""
    alice = await register(client, username="alice")
    bob = await register(client, username="bob", email="bob@example.com")
    carol = await register(client, username="carol")

    taken = await client.patch(
        "/api/users/me",
        json={"email": email, "current_password": PASSWORD},
        headers=alice.headers,
    )
    free = await client.patch(
        "/api/users/me",
        json={"email": "nobody-has-this@example.com", "current_password": PASSWORD},
        headers=carol.headers,
    )

    assert (taken.status_code, free.status_code) == (200, 200)
    assert taken.json().keys() == free.json().keys()
    assert taken.json()["pending_email"] == "bob@example.com"
    assert taken.json()["email"] == alice.email
    stored_bob = await stored_user(db, bob.id)
    assert stored_bob is not None
    assert stored_bob.email == "bob@example.com"


@pytest.mark.parametrize(
    "body",
    [
        {"role": "admin"},
        {"is_active": False},
        {"is_verified": True},
        {"id": 12345},
        {"password_hash": "$argon2id$forged"},
        {"full_name": "Alice", "role": "admin"},
    ],
)
async def test_patch_me_rejects_privileged_or_unknown_fields_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, body: dict[str, Any]
) -> None:
    alice = await register(client)
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch("/api/users/me", json=body, headers=alice.headers)

    assert_problem(response, 422, "validation_error")
    assert user_snapshot(await stored_user(db, alice.id)) == before


@pytest.mark.parametrize("field", ["full_name", "bio", "username", "email"])
async def test_patch_me_rejects_null_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, field: str
) -> None:
    alice = await register(client, full_name="Alice", bio="Hello")
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch("/api/users/me", json={field: None}, headers=alice.headers)

    assert_problem(response, 422, "validation_error")
    assert user_snapshot(await stored_user(db, alice.id)) == before


async def test_patch_me_without_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.patch("/api/users/me", json={"bio": "anonymous"})

    assert_problem(response, 401)


async def test_delete_me_removes_the_user_their_posts_and_sessions(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    bob = await register(client)
    await create_post(client, alice)
    await create_post(client, alice, published=False)
    bobs_post = await create_post(client, bob)

    response = await client.delete("/api/users/me", headers=alice.headers)

    assert response.status_code == 204
    assert response.content == b""
    assert await stored_user(db, alice.id) is None
    alice_posts = await db.scalar(
        select(func.count()).select_from(Post).where(Post.author_id == alice.id)
    )
    assert alice_posts == 0
    alice_sessions = await db.scalar(
        select(func.count()).select_from(AuthSession).where(AuthSession.user_id == alice.id)
    )
    assert alice_sessions == 0
    assert await stored_user(db, bob.id) is not None
    assert (await client.get(f"/api/posts/{bobs_post['id']}")).status_code == 200


async def test_deleted_user_token_is_401_and_login_fails(client: httpx.AsyncClient) -> None:
    alice = await register(client, username="alice")
    assert (await client.delete("/api/users/me", headers=alice.headers)).status_code == 204

    me = await client.get("/api/users/me", headers=alice.headers)
    login = await client.post("/api/token", json={"username": "alice", "password": PASSWORD})

    assert_problem(me, 401)
    assert_problem(login, 401)


async def test_deleted_user_can_register_again_with_same_email_and_username(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, username="alice", email="alice@example.com")
    assert (await client.delete("/api/users/me", headers=alice.headers)).status_code == 204

    again = await register(client, username="alice", email="alice@example.com")

    stored = await stored_user(db, again.id)
    assert stored is not None
    assert (stored.username, stored.email) == ("alice", "alice@example.com")
    assert await user_count(db) == 1


async def test_user_ids_are_not_reused_after_deletion(client: httpx.AsyncClient) -> None:
    # Links, caches and logs name users by id; PostgreSQL never hands an id out twice and the
    # SQLite mode must behave the same.
    first = await register(client)
    second = await register(client)
    assert (await client.delete("/api/users/me", headers=second.headers)).status_code == 204

    third = await register(client)

    assert third.id not in (first.id, second.id)


async def test_deleted_users_token_does_not_act_for_a_later_account(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client, username="alice")
    assert (await client.delete("/api/users/me", headers=alice.headers)).status_code == 204
    await register(client, username="mallory")

    response = await client.get("/api/users/me", headers=alice.headers)

    assert_problem(response, 401)


async def test_delete_me_without_token_is_401(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client)

    response = await client.delete("/api/users/me")

    assert_problem(response, 401)
    assert await stored_user(db, alice.id) is not None


# --- public profiles --------------------------------------------------------------------------
async def test_public_profile_has_no_email(client: httpx.AsyncClient) -> None:
    alice = await register(client, full_name="Alice Liddell", bio="Hi")

    response = await client.get(f"/api/users/{alice.id}")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == PUBLIC_KEYS
    assert body["id"] == alice.id
    assert body["username"] == alice.username
    assert body["full_name"] == "Alice Liddell"
    assert body["bio"] == "Hi"
    assert alice.email not in response.text
    assert_no_secrets(response)


async def test_public_profile_of_unknown_user_is_404_user_not_found(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)

    response = await client.get(f"/api/users/{alice.id + 1000}")

    assert_problem(response, 404, "user_not_found")


@pytest.mark.parametrize("user_id", ["0", str(2**63)])
async def test_public_profile_with_invalid_id_is_422(
    client: httpx.AsyncClient, user_id: str
) -> None:
    response = await client.get(f"/api/users/{user_id}")

    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("user_id", ["abc", "-1", "1.5"])
async def test_public_profile_of_something_not_a_number_is_404(
    client: httpx.AsyncClient, user_id: str
) -> None:
    # Only numbers name a user: /api/users/verify and /api/users/me are other resources.
    response = await client.get(f"/api/users/{user_id}")

    assert_problem(response, 404, "not_found")
