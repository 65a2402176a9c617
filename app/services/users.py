"""Accounts: registration, profile changes, passwords and administration."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import (
    EmailTaken,
    InactiveUser,
    LastAdmin,
    TokenRevoked,
    UsernameTaken,
    UserNotFound,
    WrongPassword,
)
from app.models import Post, PostLike, Role, User
from app.schemas.common import Page, PageQuery
from app.schemas.token import TokenPair
from app.schemas.user import (
    AdminUserUpdate,
    PasswordChange,
    UserCreate,
    UserOut,
    UserPublic,
    UserUpdate,
)
from app.services import auth, emails, images
from app.services.backends import Backends
from app.services.security import Client, Security
from app.stores import Stores
from app.stores.cache import ALL_GENERATIONS


def to_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        username=user.username,
        full_name=user.full_name,
        bio=user.bio,
        role=Role(user.role).value,
        is_active=user.is_active,
        is_verified=user.is_verified,
        created_at=user.created_at,
    )


def to_public(user: User) -> UserPublic:
    return UserPublic(
        id=user.id,
        username=user.username,
        full_name=user.full_name,
        bio=user.bio,
        created_at=user.created_at,
    )


async def register(
    db: AsyncSession,
    security: Security,
    backends: Backends,
    data: UserCreate,
    client: Client,
) -> tuple[User, TokenPair]:
    """Create the account, log it in, and queue the verification e-mail."""
    await backends.stores.limiter.hit(backends.stores.limiter.register_ip, client.ip)
    await _ensure_unique(db, email=data.email, username=data.username)
    await db.commit()  # hand the connection back while the password hashes
    password_hash = await security.passwords.hash(data.password)
    user = User(
        email=data.email,
        username=data.username,
        password_hash=password_hash,
        full_name=data.full_name,
        bio=data.bio,
    )
    db.add(user)
    await _flush_unique(db, email=data.email, username=data.username)
    tokens = await auth.start_session(db, security, user, client)
    await emails.send_verification(db, backends, user)
    return user, tokens


async def create_admin(
    db: AsyncSession, security: Security, email: str, username: str, password: str
) -> User:
    """Create an administrator, or promote the existing account with that e-mail address."""
    user = await db.scalar(select(User).where(User.email == email.lower()))
    if user is None:
        await _ensure_unique(db, username=username)
        user = User(
            email=email.lower(),
            username=username,
            password_hash=await security.passwords.hash(password),
            is_verified=True,
        )
        db.add(user)
    user.role = Role.ADMIN
    user.is_active = True
    await _flush_unique(db, email=email.lower(), username=username)
    await db.commit()
    return user


async def get_signed_in(db: AsyncSession, user_id: int) -> User:
    """The account of an authenticated caller; gone or deactivated means the token is void."""
    user = await db.get(User, user_id)
    if user is None:
        raise TokenRevoked
    if not user.is_active:
        raise InactiveUser
    return user


async def get(db: AsyncSession, user_id: int) -> User:
    user = await db.get(User, user_id)
    if user is None:
        raise UserNotFound
    return user


async def update(db: AsyncSession, backends: Backends, user: User, changes: UserUpdate) -> User:
    """Change one's own profile; a new e-mail address gets a verification e-mail."""
    old_email = user.email
    await _apply(db, backends.stores, user, changes.changes())
    if user.email != old_email:
        await emails.send_verification(db, backends, user)
    return user


async def change_password(
    db: AsyncSession,
    security: Security,
    stores: Stores,
    user: User,
    session_id: uuid.UUID,
    data: PasswordChange,
) -> None:
    """Set a new password; every session but the caller's ends."""
    current_hash = user.password_hash
    await db.commit()
    if not await security.passwords.verify(current_hash, data.current_password):
        raise WrongPassword
    user.password_hash = await security.passwords.hash(data.new_password)
    db.add(user)
    await auth.end_sessions(db, user.id, keep=session_id)
    await db.commit()
    await stores.sessions.user_changed(user.id)


async def delete(db: AsyncSession, backends: Backends, user: User) -> None:
    """Delete the account with its posts, their images, likes and sessions."""
    if user.is_admin:
        await _ensure_other_admin(db, user)
    image_keys = await images.storage_keys_of_posts(db, Post.author_id == user.id)
    # Their likes go with them: take them off the counters in the same transaction.
    await db.execute(
        sa.update(Post)
        .where(Post.id.in_(select(PostLike.post_id).where(PostLike.user_id == user.id)))
        .values(likes=Post.likes - 1)
        .execution_options(synchronize_session=False)
    )
    await db.delete(user)
    await db.commit()
    await images.remove_files(backends.media, image_keys)
    await backends.stores.sessions.user_changed(user.id)
    await backends.stores.cache.bump(*ALL_GENERATIONS)  # their posts and likes vanish


async def list_users(db: AsyncSession, page: PageQuery) -> Page[UserOut]:
    limit, offset = page.limit, page.offset
    total = await db.scalar(select(func.count()).select_from(User)) or 0
    rows = await db.scalars(select(User).order_by(User.id).limit(limit).offset(offset))
    return Page(items=[to_out(u) for u in rows], total=total, limit=limit, offset=offset)


async def admin_update(
    db: AsyncSession, stores: Stores, user: User, changes: AdminUserUpdate
) -> User:
    values = changes.changes()
    losing_admin = user.is_admin and (
        values.get("role", user.role) != Role.ADMIN or values.get("is_active") is False
    )
    if losing_admin:
        await _ensure_other_admin(db, user)
    if values.get("is_active") is False:
        await auth.end_sessions(db, user.id)
    await _apply(db, stores, user, values)
    return user


async def _apply(db: AsyncSession, stores: Stores, user: User, values: dict[str, Any]) -> None:
    """Apply profile changes, commit, and outdate what depended on the old values."""
    access_changed = any(
        field in values and values[field] != getattr(user, field) for field in ("role", "is_active")
    )
    renamed = "username" in values and values["username"] != user.username
    email, username = values.get("email"), values.get("username")
    await _ensure_unique(
        db,
        email=email if email != user.email else None,
        username=username if username != user.username else None,
    )
    if email is not None and email != user.email and "is_verified" not in values:
        values["is_verified"] = False  # a new address must be verified again
    for field, value in values.items():
        setattr(user, field, value)
    await _flush_unique(db, email=email, username=username)
    await db.commit()
    if access_changed:
        await stores.sessions.user_changed(user.id)
    if renamed:
        await stores.cache.bump(*ALL_GENERATIONS)  # the name is on every post they wrote


async def _ensure_unique(
    db: AsyncSession, email: str | None = None, username: str | None = None
) -> None:
    if email is not None and await db.scalar(select(User.id).where(User.email == email)):
        raise EmailTaken
    if username is not None and await db.scalar(select(User.id).where(User.username == username)):
        raise UsernameTaken


async def _flush_unique(db: AsyncSession, email: str | None, username: str | None) -> None:
    """Flush, turning a unique violation from a concurrent request into the right 409."""
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        await _ensure_unique(db, email=email, username=username)
        raise


async def _ensure_other_admin(db: AsyncSession, user: User) -> None:
    others = await db.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN, User.is_active, User.id != user.id)
    )
    if not others:
        raise LastAdmin
