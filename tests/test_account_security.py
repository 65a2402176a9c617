"""Sensitive account changes: common passwords refused everywhere a password is chosen, and
per-account limits on wrong current passwords and on e-mail changes (SPEC §6)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core import password_policy
from app.core.security import Passwords
from app.models import User
from tests.factories import PASSWORD, register
from tests.problems import assert_problem

COMMON = ["password", "12345678", "qwertyuiop", "Password", "iloveyou"]
NEW_PASSWORD = "a brand new passphrase"


async def stored_user(db: AsyncSession, user_id: int) -> User:
    user = await db.scalar(
        select(User).where(User.id == user_id).execution_options(populate_existing=True)
    )
    assert user is not None
    return user


def assert_common_password_refused(response: httpx.Response, field: str) -> None:
    body = assert_problem(response, 422, "validation_error")
    (error,) = body["errors"]
    assert error["loc"] == ["body", field]
    assert "most common" in error["msg"]
    assert "most common" in body["detail"]


# --- the list -----------------------------------------------------------------------------------
def test_the_list_is_a_maintained_one_and_loaded_once() -> None:
    common = password_policy.common_passwords()
    assert len(common) >= 10_000
    assert password_policy.common_passwords() is common
    assert {"password", "12345678", "qwertyuiop"} <= common
    assert not password_policy.is_common(PASSWORD)


def test_the_policy_explains_what_is_wrong() -> None:
    with pytest.raises(password_policy.WeakPassword, match="most common"):
        password_policy.check("qwertyuiop")
    with pytest.raises(password_policy.WeakPassword, match="at least 8"):
        password_policy.check("")
    assert password_policy.check(PASSWORD) == PASSWORD


# --- everywhere a password is chosen -------------------------------------------------------------
@pytest.mark.parametrize("password", COMMON)
async def test_registration_refuses_a_common_password(
    client: httpx.AsyncClient, db: AsyncSession, password: str
) -> None:
    response = await client.post(
        "/api/users",
        json={"username": "alice", "email": "alice@example.com", "password": password},
    )

    assert_common_password_refused(response, "password")
    assert await db.scalar(select(func.count()).select_from(User)) == 0


async def test_password_change_refuses_a_common_password(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    before = (await stored_user(db, alice.id)).password_hash

    response = await client.post(
        "/api/users/me/password",
        json={"current_password": PASSWORD, "new_password": "qwertyuiop"},
        headers=alice.headers,
    )

    assert_common_password_refused(response, "new_password")
    assert (await stored_user(db, alice.id)).password_hash == before


async def test_password_reset_refuses_a_common_password(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/password-reset/confirm", json={"token": "some-token", "new_password": "12345678"}
    )

    assert_common_password_refused(response, "new_password")


async def test_logging_in_with_an_old_common_password_still_works(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    """The policy is for new passwords: an account made before it keeps working."""
    alice = await register(client)
    await db.execute(
        update(User)
        .where(User.id == alice.id)
        .values(password_hash=await Passwords(settings).hash("password"))
    )
    await db.commit()

    response = await client.post(
        "/api/token", json={"username": alice.username, "password": "password"}
    )

    assert response.status_code == 200, response.text


# --- wrong current passwords, per account ------------------------------------------------------
async def test_wrong_current_passwords_are_limited_per_account(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    """A stolen access token gets a handful of guesses, shared by both sensitive routes."""
    assert settings.rate_limit_sensitive_account == "5/15 minutes"
    alice = await register(client)
    bob = await register(client)
    guesses = [
        client.patch(
            "/api/users/me",
            json={"email": "thief@example.org", "current_password": f"guess {n}"},
            headers=alice.headers,
        )
        for n in range(3)
    ] + [
        client.post(
            "/api/users/me/password",
            json={"current_password": f"guess {n}", "new_password": NEW_PASSWORD},
            headers=alice.headers,
        )
        for n in range(2)
    ]
    for guess in guesses:
        assert_problem(await guess, 400, "wrong_password")

    limited = await client.patch(
        "/api/users/me",
        json={"email": "thief@example.org", "current_password": PASSWORD},
        headers=alice.headers,
    )
    limited_change = await client.post(
        "/api/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=alice.headers,
    )

    assert_problem(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) > 0
    assert_problem(limited_change, 429, "rate_limited")
    stored = await stored_user(db, alice.id)
    assert (stored.email, stored.pending_email) == (alice.email, None)
    other = await client.patch(
        "/api/users/me",
        json={"email": "bob-new@example.org", "current_password": PASSWORD},
        headers=bob.headers,
    )
    assert other.status_code == 200, other.text


async def test_right_current_passwords_are_not_counted(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    for n in range(6):
        response = await client.post(
            "/api/users/me/password",
            json={
                "current_password": PASSWORD if n % 2 == 0 else NEW_PASSWORD,
                "new_password": NEW_PASSWORD if n % 2 == 0 else PASSWORD,
            },
            headers=alice.headers,
        )
        assert response.status_code == 204, response.text


# --- e-mail changes, per account ----------------------------------------------------------------
async def test_email_changes_are_limited_per_account(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    """Each change mails two addresses: without a limit, a mail cannon (and an oracle)."""
    assert settings.rate_limit_email_change == "5/hour"
    alice = await register(client)
    bob = await register(client)
    for n in range(5):
        response = await client.patch(
            "/api/users/me",
            json={"email": f"victim{n}@example.org", "current_password": PASSWORD},
            headers=alice.headers,
        )
        assert response.status_code == 200, response.text

    limited = await client.patch(
        "/api/users/me",
        json={"email": "victim5@example.org", "current_password": PASSWORD},
        headers=alice.headers,
    )

    assert_problem(limited, 429, "rate_limited")
    assert (await stored_user(db, alice.id)).pending_email == "victim4@example.org"
    other = await client.patch(
        "/api/users/me",
        json={"email": "victim5@example.org", "current_password": PASSWORD},
        headers=bob.headers,
    )
    assert other.status_code == 200, other.text
