"""Small helpers that create users and posts through the API, as a client would."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import jwt
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuthSession, User

_counter = itertools.count(1)
PASSWORD = "correct horse battery"
# The fields of UserOut: exactly these, never a password or its hash.
USER_OUT_KEYS = {
    "id",
    "email",
    "pending_email",
    "username",
    "full_name",
    "bio",
    "role",
    "is_active",
    "is_verified",
    "image",
    "created_at",
}


@dataclass
class Account:
    id: int
    username: str
    email: str
    password: str
    access_token: str
    refresh_token: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def session_id(token: str) -> uuid.UUID:
    """The session (`sid`) a token belongs to, read without checking the signature."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return uuid.UUID(claims["sid"])


async def register(
    client: httpx.AsyncClient,
    username: str | None = None,
    email: str | None = None,
    password: str = PASSWORD,
    **extra: Any,
) -> Account:
    n = next(_counter)
    username = username or f"user{n}"
    email = email or f"{username}@example.com"
    response = await client.post(
        "/api/users",
        json={"username": username, "email": email, "password": password, **extra},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Account(
        id=body["user"]["id"],
        username=username,
        email=email.lower(),
        password=password,
        access_token=body["tokens"]["access_token"],
        refresh_token=body["tokens"]["refresh_token"],
        body=body,
    )


async def make_admin(db: AsyncSession, account: Account) -> Account:
    await db.execute(update(User).where(User.id == account.id).values(role="admin"))
    await db.commit()
    return account


async def login(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> dict[str, Any]:
    response = await client.post("/api/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


async def create_post(client: httpx.AsyncClient, author: Account, **fields: Any) -> dict[str, Any]:
    n = next(_counter)
    payload = {"title": f"Post {n}", "content": f"Content of post {n}.", **fields}
    response = await client.post("/api/posts", json=payload, headers=author.headers)
    assert response.status_code == 201, response.text
    post: dict[str, Any] = response.json()
    return post


async def stored_sessions(db: AsyncSession, user_id: int) -> dict[uuid.UUID, datetime | None]:
    """Each stored session of the user and when it was revoked (None: still live)."""
    rows = (
        await db.execute(
            select(AuthSession.id, AuthSession.revoked_at).where(AuthSession.user_id == user_id)
        )
    ).all()
    await db.rollback()
    return dict(rows)
