"""Administration: listing, changing and deleting users, the last-admin rule, and the CLI."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import AdminSetupRefused
from app.models import AuthSession, Post, User
from app.services import users
from tests.conftest import running_app, settings_like
from tests.factories import (
    PASSWORD,
    USER_OUT_KEYS,
    Account,
    create_post,
    login,
    make_admin,
    register,
)
from tests.problems import assert_problem

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 120
STRONG = "a strong admin password"


async def stored_user(db: AsyncSession, user_id: int) -> User | None:
    """The row as it is now, not as this session last saw it."""
    return await db.scalar(
        select(User).where(User.id == user_id).execution_options(populate_existing=True)
    )


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
    }


async def new_admin(client: httpx.AsyncClient, db: AsyncSession, username: str) -> Account:
    return await make_admin(db, await register(client, username=username))


# --- listing ----------------------------------------------------------------------------------
async def test_admin_lists_users_as_a_page(client: httpx.AsyncClient, db: AsyncSession) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")
    bob = await register(client, username="bob")

    response = await client.get("/api/users", headers=admin.headers)

    assert response.status_code == 200, response.text
    page = response.json()
    assert set(page) == {"items", "total", "limit", "offset"}
    assert page["total"] == 3
    assert (page["limit"], page["offset"]) == (20, 0)
    assert [u["id"] for u in page["items"]] == [admin.id, alice.id, bob.id]
    for item in page["items"]:
        assert set(item) == USER_OUT_KEYS
    assert page["items"][0]["role"] == "admin"
    assert "password" not in response.text
    assert "$argon2" not in response.text


async def test_admin_user_list_honours_limit_and_offset(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    await register(client, username="alice")
    bob = await register(client, username="bob")
    await register(client, username="carol")

    response = await client.get(
        "/api/users", params={"limit": 1, "offset": 2}, headers=admin.headers
    )

    assert response.status_code == 200, response.text
    page = response.json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 1, 2)
    assert [u["id"] for u in page["items"]] == [bob.id]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1}])
async def test_admin_user_list_rejects_out_of_range_paging(
    client: httpx.AsyncClient, db: AsyncSession, params: dict[str, int]
) -> None:
    admin = await new_admin(client, db, "root")

    response = await client.get("/api/users", params=params, headers=admin.headers)

    assert_problem(response, 422, "validation_error")


async def test_normal_user_cannot_list_users(client: httpx.AsyncClient) -> None:
    alice = await register(client)

    response = await client.get("/api/users", headers=alice.headers)

    assert_problem(response, 403, "admin_required")


async def test_anonymous_cannot_list_users(client: httpx.AsyncClient) -> None:
    await register(client)

    response = await client.get("/api/users")

    assert_problem(response, 401)
    assert "www-authenticate" in response.headers


# --- changing users ---------------------------------------------------------------------------
async def test_admin_sets_role_is_active_and_is_verified(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")

    response = await client.patch(
        f"/api/users/{alice.id}",
        json={"role": "admin", "is_verified": True, "is_active": True},
        headers=admin.headers,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == USER_OUT_KEYS
    assert (body["role"], body["is_verified"], body["is_active"]) == ("admin", True, True)
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert (stored.role, stored.is_verified, stored.is_active) == ("admin", True, True)


async def test_admin_promoted_user_may_list_users(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")
    response = await client.patch(
        f"/api/users/{alice.id}", json={"role": "admin"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text

    listing = await client.get("/api/users", headers=alice.headers)

    assert listing.status_code == 200, listing.text


async def test_admin_changes_profile_fields_of_another_user(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")

    response = await client.patch(
        f"/api/users/{alice.id}",
        json={"username": "liddell", "full_name": "Alice Liddell", "bio": "moderated"},
        headers=admin.headers,
    )

    assert response.status_code == 200, response.text
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert (stored.username, stored.full_name, stored.bio) == (
        "liddell",
        "Alice Liddell",
        "moderated",
    )


@pytest.mark.parametrize(
    "body",
    [{"role": "superuser"}, {"is_active": "maybe"}, {"password_hash": "x"}, {"role": None}],
)
async def test_admin_patch_rejects_invalid_values_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, body: dict[str, Any]
) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch(f"/api/users/{alice.id}", json=body, headers=admin.headers)

    assert_problem(response, 422, "validation_error")
    assert user_snapshot(await stored_user(db, alice.id)) == before


async def test_admin_patch_to_taken_username_is_409_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")
    await register(client, username="bob")
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch(
        f"/api/users/{alice.id}",
        json={"username": "bob", "role": "admin"},
        headers=admin.headers,
    )

    assert_problem(response, 409, "username_taken")
    assert user_snapshot(await stored_user(db, alice.id)) == before


async def test_admin_patch_of_unknown_user_is_404(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")

    response = await client.patch(
        f"/api/users/{admin.id + 1000}", json={"is_verified": True}, headers=admin.headers
    )

    assert_problem(response, 404, "user_not_found")


async def test_normal_user_cannot_patch_another_user(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, username="alice")
    bob = await register(client, username="bob")
    before = user_snapshot(await stored_user(db, bob.id))

    response = await client.patch(
        f"/api/users/{bob.id}",
        json={"role": "user", "is_active": False, "bio": "hacked"},
        headers=alice.headers,
    )

    assert_problem(response, 403, "admin_required")
    assert user_snapshot(await stored_user(db, bob.id)) == before


async def test_normal_user_cannot_promote_themselves_through_the_admin_route(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, username="alice")

    response = await client.patch(
        f"/api/users/{alice.id}", json={"role": "admin"}, headers=alice.headers
    )

    assert_problem(response, 403, "admin_required")
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert stored.role == "user"


async def test_anonymous_cannot_patch_a_user(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client, username="alice")
    before = user_snapshot(await stored_user(db, alice.id))

    response = await client.patch(f"/api/users/{alice.id}", json={"role": "admin"})

    assert_problem(response, 401)
    assert user_snapshot(await stored_user(db, alice.id)) == before


async def test_deactivating_a_user_ends_their_sessions(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")
    second_login = await login(client, "alice")

    response = await client.patch(
        f"/api/users/{alice.id}", json={"is_active": False}, headers=admin.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert stored.is_active is False
    live = await db.scalar(
        select(func.count())
        .select_from(AuthSession)
        .where(AuthSession.user_id == alice.id, AuthSession.revoked_at.is_(None))
    )
    assert live == 0
    me = await client.get("/api/users/me", headers=alice.headers)
    assert_problem(me, 401)
    other = await client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {second_login['access_token']}"}
    )
    assert_problem(other, 401)
    refreshed = await client.post("/api/token/refresh", json={"refresh_token": alice.refresh_token})
    assert_problem(refreshed, 401)


async def test_deactivated_user_cannot_log_in(client: httpx.AsyncClient, db: AsyncSession) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")
    response = await client.patch(
        f"/api/users/{alice.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.status_code == 200, response.text

    attempt = await client.post("/api/token", json={"username": "alice", "password": PASSWORD})

    assert_problem(attempt, 401)
    live = await db.scalar(
        select(func.count())
        .select_from(AuthSession)
        .where(AuthSession.user_id == alice.id, AuthSession.revoked_at.is_(None))
    )
    assert live == 0


# --- deleting users ---------------------------------------------------------------------------
async def test_admin_deletes_a_user_and_their_posts(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    alice = await register(client, username="alice")
    await create_post(client, alice)
    admins_post = await create_post(client, admin)

    response = await client.delete(f"/api/users/{alice.id}", headers=admin.headers)

    assert response.status_code == 204
    assert response.content == b""
    assert await stored_user(db, alice.id) is None
    remaining = (await db.scalars(select(Post.id))).all()
    assert remaining == [admins_post["id"]]
    assert_problem(await client.get("/api/users/me", headers=alice.headers), 401)
    assert_problem(await client.get(f"/api/users/{alice.id}"), 404, "user_not_found")


async def test_admin_delete_of_unknown_user_is_404(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")

    response = await client.delete(f"/api/users/{admin.id + 1000}", headers=admin.headers)

    assert_problem(response, 404, "user_not_found")


async def test_normal_user_cannot_delete_another_user(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client, username="alice")
    bob = await register(client, username="bob")

    response = await client.delete(f"/api/users/{bob.id}", headers=alice.headers)

    assert_problem(response, 403, "admin_required")
    assert await stored_user(db, bob.id) is not None


async def test_anonymous_cannot_delete_a_user(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client, username="alice")

    response = await client.delete(f"/api/users/{alice.id}")

    assert_problem(response, 401)
    assert await stored_user(db, alice.id) is not None


# --- the last administrator -------------------------------------------------------------------
@pytest.mark.parametrize("body", [{"role": "user"}, {"is_active": False}])
async def test_last_admin_cannot_demote_or_deactivate_themselves(
    client: httpx.AsyncClient, db: AsyncSession, body: dict[str, Any]
) -> None:
    admin = await new_admin(client, db, "root")
    await register(client, username="alice")

    response = await client.patch(f"/api/users/{admin.id}", json=body, headers=admin.headers)

    assert_problem(response, 409, "last_admin")
    stored = await stored_user(db, admin.id)
    assert stored is not None
    assert (stored.role, stored.is_active) == ("admin", True)
    assert (await client.get("/api/users", headers=admin.headers)).status_code == 200


async def test_last_admin_cannot_delete_themselves_through_the_admin_route(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")

    response = await client.delete(f"/api/users/{admin.id}", headers=admin.headers)

    assert_problem(response, 409, "last_admin")
    assert await stored_user(db, admin.id) is not None


async def test_last_admin_cannot_delete_their_own_account(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")

    response = await client.delete("/api/users/me", headers=admin.headers)

    assert_problem(response, 409, "last_admin")
    assert await stored_user(db, admin.id) is not None


async def test_an_inactive_admin_does_not_count_as_another_admin(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    other = await new_admin(client, db, "other")
    response = await client.patch(
        f"/api/users/{other.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.status_code == 200, response.text

    response = await client.patch(
        f"/api/users/{admin.id}", json={"role": "user"}, headers=admin.headers
    )

    assert_problem(response, 409, "last_admin")
    stored = await stored_user(db, admin.id)
    assert stored is not None
    assert stored.role == "admin"


async def test_admin_may_step_down_when_another_admin_remains(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    other = await new_admin(client, db, "other")

    response = await client.patch(
        f"/api/users/{admin.id}", json={"role": "user"}, headers=admin.headers
    )

    assert response.status_code == 200, response.text
    stored = await stored_user(db, admin.id)
    assert stored is not None
    assert stored.role == "user"
    assert_problem(await client.get("/api/users", headers=admin.headers), 403, "admin_required")
    assert (await client.get("/api/users", headers=other.headers)).status_code == 200


async def test_admin_may_delete_another_admin_when_one_remains(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await new_admin(client, db, "root")
    other = await new_admin(client, db, "other")

    response = await client.delete(f"/api/users/{other.id}", headers=admin.headers)

    assert response.status_code == 204
    assert await stored_user(db, other.id) is None


# --- the create-admin command -----------------------------------------------------------------
async def run_create_admin(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    assert settings.database_url is not None
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "DATA_DIR": str(settings.data_dir),
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app", "create-admin", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


async def test_cli_create_admin_makes_an_administrator_who_can_log_in(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    password = "a strong admin password"

    result = await run_create_admin(
        settings, "--email", "Root@Example.com", "--username", "root", "--password", password
    )

    assert result.returncode == 0, result.stderr
    stored = await db.scalar(select(User).where(User.username == "root"))
    assert stored is not None
    assert (stored.email, stored.role, stored.is_active) == ("root@example.com", "admin", True)
    assert password not in stored.password_hash
    tokens = await login(client, "root", password)
    listing = await client.get(
        "/api/users", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert listing.status_code == 200, listing.text
    assert [u["username"] for u in listing.json()["items"]] == ["root"]
    again = await run_create_admin(
        settings, "--email", "root@example.com", "--password", "another strong password"
    )
    assert again.returncode == 0, again.stderr
    assert "root" in again.stdout
    assert "already an administrator; nothing changed" in again.stdout
    await login(client, "root", password)


async def test_cli_create_admin_never_promotes_an_existing_account_unasked(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    """Anyone could have registered the address the operator is about to use."""
    squatter = await register(client, username="squatter", email="root@example.com")
    await db.execute(update(User).where(User.id == squatter.id).values(is_verified=True))
    await db.commit()
    before = user_snapshot(await stored_user(db, squatter.id))

    result = await run_create_admin(
        settings, "--email", "Root@Example.com", "--username", "root", "--password", STRONG
    )

    assert result.returncode == 1, result
    assert "already exists" in result.stderr
    assert "--promote-existing" in result.stderr
    assert user_snapshot(await stored_user(db, squatter.id)) == before
    assert (await db.scalar(select(func.count()).select_from(User))) == 1
    assert_problem(await client.get("/api/users", headers=squatter.headers), 403)
    assert (
        await client.post("/api/token", json={"username": "root@example.com", "password": STRONG})
    ).status_code == 401


async def test_create_admin_promotes_an_unverified_account_not_even_when_asked(
    client: httpx.AsyncClient, db: AsyncSession, app: FastAPI
) -> None:
    alice = await register(client, username="alice", email="alice@example.com")

    with pytest.raises(AdminSetupRefused, match="has not verified"):
        await users.create_admin(
            db,
            app.state.backends,
            email="alice@example.com",
            username="admin",
            password=None,
            promote_existing=True,
        )

    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert stored.role == "user"


async def test_cli_create_admin_promotes_a_verified_account_when_asked(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    alice = await register(client, username="alice", email="alice@example.com")
    await db.execute(update(User).where(User.id == alice.id).values(is_verified=True))
    await db.commit()

    result = await run_create_admin(
        settings, "--email", "ALICE@example.com", "--username", "ignored", "--promote-existing"
    )

    assert result.returncode == 0, result.stderr
    assert "alice" in result.stdout
    assert "password is unchanged" in result.stdout
    stored = await stored_user(db, alice.id)
    assert stored is not None
    assert (stored.username, stored.role) == ("alice", "admin")
    assert (await db.scalar(select(func.count()).select_from(User))) == 1
    assert (await client.get("/api/users", headers=alice.headers)).status_code == 200
    await login(client, "alice", PASSWORD)


async def test_cli_create_admin_refuses_an_empty_password(
    db: AsyncSession, settings: Settings
) -> None:
    result = await run_create_admin(
        settings, "--email", "root@example.com", "--username", "root", "--password", ""
    )

    assert result.returncode == 1, result
    assert "at least 8 characters" in result.stderr
    assert (await db.scalar(select(func.count()).select_from(User))) == 0


@pytest.mark.parametrize("password", ["password", "qwertyuiop", "Password1"])
async def test_create_admin_refuses_a_common_password(
    db: AsyncSession, app: FastAPI, password: str
) -> None:
    with pytest.raises(AdminSetupRefused, match="most common"):
        await users.create_admin(
            db, app.state.backends, email="root@example.com", username="root", password=password
        )

    assert (await db.scalar(select(func.count()).select_from(User))) == 0


async def test_create_admin_again_for_an_administrator_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, app: FastAPI
) -> None:
    created, outcome = await users.create_admin(
        db, app.state.backends, email="root@example.com", username="root", password=STRONG
    )
    assert outcome is users.AdminOutcome.CREATED
    before = (user_snapshot(created), created.password_hash)

    again, outcome = await users.create_admin(
        db,
        app.state.backends,
        email="Root@example.com",
        username="other",
        password="another strong password",
    )

    assert (again.id, outcome) == (created.id, users.AdminOutcome.UNCHANGED)
    stored = await stored_user(db, created.id)
    assert stored is not None
    assert (user_snapshot(stored), stored.password_hash) == before
    await login(client, "root", STRONG)


# --- FIRST_ADMIN_* at start-up ----------------------------------------------------------------
async def start_with_first_admin(settings: Settings, email: str, password: str) -> None:
    configured = settings_like(
        settings,
        first_admin_email=email,
        first_admin_username="root",
        first_admin_password=SecretStr(password),
    )
    async with running_app(configured) as (_, client):
        assert (await client.get("/health")).status_code == 200  # it starts anyway


async def test_first_admin_never_promotes_an_existing_account(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    squatter = await register(client, username="squatter", email="root@example.com")
    await db.execute(update(User).where(User.id == squatter.id).values(is_verified=True))
    await db.commit()

    with caplog.at_level(logging.ERROR, logger="app.main"):
        await start_with_first_admin(settings, "root@example.com", STRONG)

    stored = await stored_user(db, squatter.id)
    assert stored is not None
    assert (stored.role, stored.username) == ("user", "squatter")
    assert (await db.scalar(select(func.count()).select_from(User))) == 1
    (record,) = [r for r in caplog.records if r.name == "app.main" and r.levelno == logging.ERROR]
    assert "already exists" in record.__dict__["reason"]


async def test_first_admin_with_a_common_password_is_not_created(
    db: AsyncSession, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="app.main"):
        await start_with_first_admin(settings, "root@example.com", "12345678")

    assert (await db.scalar(select(func.count()).select_from(User))) == 0
    (record,) = [r for r in caplog.records if r.name == "app.main" and r.levelno == logging.ERROR]
    assert "most common" in record.__dict__["reason"]


async def test_admin_lists_users_by_cursor(client: httpx.AsyncClient, db: AsyncSession) -> None:
    admin = await new_admin(client, db, "root")
    for n in range(5):
        await register(client, username=f"user{n}")
    everyone = (await client.get("/api/users", params={"limit": 100}, headers=admin.headers)).json()
    assert set(everyone) == {"items", "total", "limit", "offset"}
    walked: list[int] = []
    cursor = ""
    while True:
        response = await client.get(
            "/api/users", params={"limit": 2, "cursor": cursor}, headers=admin.headers
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        walked += [user["id"] for user in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert walked == [user["id"] for user in everyone["items"]]

    first = (
        await client.get("/api/users", params={"limit": 2, "cursor": ""}, headers=admin.headers)
    ).json()
    tampered = first["next_cursor"][:-2] + ("A" if first["next_cursor"][-2] != "A" else "B") + "x"
    for bad in ("zzz", tampered):
        response = await client.get("/api/users", params={"cursor": bad}, headers=admin.headers)
        assert_problem(response, 422, "invalid_cursor")
    both = await client.get("/api/users", params={"cursor": "", "offset": 2}, headers=admin.headers)
    assert_problem(both, 422, "validation_error")
    alice = await register(client, username="alice")
    refused = await client.get("/api/users", params={"cursor": ""}, headers=alice.headers)
    assert refused.status_code == 403, refused.text
