"""Accounts: registration, profile changes, passwords and administration."""

from __future__ import annotations

import enum
import uuid
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import password_policy
from app.core.cursors import BadCursor, Cursors
from app.errors import (
    AdminSetupRefused,
    EmailTaken,
    InactiveUser,
    InvalidCursor,
    LastAdmin,
    TokenRevoked,
    UsernameTaken,
    UserNotFound,
    WrongPassword,
)
from app.models import Post, PostLike, Role, User
from app.schemas.common import CursorPage, Page
from app.schemas.token import TokenPair
from app.schemas.user import (
    AdminUserUpdate,
    Email,
    PasswordChange,
    ProfileUpdate,
    UserCreate,
    UserListQuery,
    Username,
    UserOut,
    UserPublic,
)
from app.services import auth, emails, images, profiles
from app.services.backends import Backends
from app.stores.cache import ALL_GENERATIONS, user_generation


def to_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        pending_email=user.pending_email,
        username=user.username,
        full_name=user.full_name,
        bio=user.bio,
        role=Role(user.role).value,
        is_active=user.is_active,
        is_verified=user.is_verified,
        image=user.image,
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
    db: AsyncSession, backends: Backends, *, data: UserCreate, client: auth.Client
) -> tuple[User, TokenPair]:
    """Create the account, log it in, and queue the verification e-mail."""
    await backends.stores.limiter.hit(backends.stores.limiter.register_ip, client.ip)
    await _ensure_unique(db, email=data.email, username=data.username)
    await db.commit()  # hand the connection back while the password hashes
    password_hash = await backends.security.passwords.hash(data.password)
    user = User(
        email=data.email,
        username=data.username,
        password_hash=password_hash,
        full_name=data.full_name,
        bio=data.bio,
    )
    db.add(user)
    await _flush_unique(db, email=data.email, username=data.username)
    tokens = await auth.start_session(db, backends, user=user, client=client)
    await emails.send_verification(db, backends, user=user)
    return user, tokens


class AdminOutcome(enum.StrEnum):
    CREATED = "created"
    PROMOTED = "promoted"
    UNCHANGED = "unchanged"  # already an active administrator: nothing was touched


_EMAIL: TypeAdapter[str] = TypeAdapter(Email)
_USERNAME: TypeAdapter[str] = TypeAdapter(Username)


async def create_admin(
    db: AsyncSession,
    backends: Backends,
    *,
    email: str,
    username: str,
    password: str | None,
    promote_existing: bool = False,
) -> tuple[User, AdminOutcome]:
    """Create an administrator, never handing administration to an account someone else may
    control: anyone can register (or, before it is verified, ask for) an address. An existing
    account is promoted only when asked (`promote_existing`) and only if its address is
    verified; an existing active administrator is left exactly as it is."""
    try:
        email = _EMAIL.validate_python(email)
    except ValidationError:
        raise AdminSetupRefused(f"{email!r} is not an e-mail address") from None
    user = await db.scalar(select(User).where(User.email == email))
    if user is not None:
        return user, await _promote(db, user, promote_existing=promote_existing)
    if password is None:
        raise AdminSetupRefused("a new administrator account needs a password")
    try:
        password_policy.check(password)
    except password_policy.WeakPassword as exc:
        raise AdminSetupRefused(f"the password is refused: {exc}") from None
    try:
        username = _USERNAME.validate_python(username)
    except ValidationError:
        raise AdminSetupRefused(
            f"{username!r} is not a username: 3-32 characters of a-z, 0-9 and _"
        ) from None
    try:
        await _ensure_unique(db, username=username)
    except UsernameTaken:
        raise AdminSetupRefused(
            f"the username {username!r} is taken by another account; choose another one"
        ) from None
    await db.commit()  # hand the connection back while the password hashes
    user = User(
        email=email,
        username=username,
        password_hash=await backends.security.passwords.hash(password),
        role=Role.ADMIN,
        is_verified=True,
    )
    db.add(user)
    await _flush_unique(db, email=email, username=username)
    await db.commit()
    return user, AdminOutcome.CREATED


async def _promote(db: AsyncSession, user: User, *, promote_existing: bool) -> AdminOutcome:
    if user.is_admin and user.is_active:
        return AdminOutcome.UNCHANGED
    if not promote_existing:
        raise AdminSetupRefused(
            f"an account with this address already exists (username {user.username!r}) and "
            "is not an administrator; anyone could have registered it, so it was not promoted "
            "and nothing changed. If that account is yours, promote it explicitly "
            "(`create-admin --promote-existing`); otherwise use another address."
        )
    if not user.is_verified:
        raise AdminSetupRefused(
            f"the account {user.username!r} has not verified its e-mail address, so nothing "
            "shows that it is yours: nothing changed. Verify the address first."
        )
    user.role = Role.ADMIN
    user.is_active = True
    await db.commit()
    return AdminOutcome.PROMOTED


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


async def update(
    db: AsyncSession, backends: Backends, *, user: User, changes: ProfileUpdate
) -> User:
    """Change one's own profile. A new e-mail address needs the current password, and only
    waits as `pending_email` until the link sent to it is used (`emails.verify`): a stolen
    access token alone cannot move the account, or its password resets, to another mailbox."""
    values = changes.changes()
    new_email = values.pop("email", None)
    if new_email is not None:
        assert changes.current_password is not None, "the schema requires it with an e-mail"
        await _check_current_password(db, backends, user, changes.current_password)
    if values:
        await _apply(db, backends, user, values)
    if new_email is not None:
        await _request_email_change(db, backends, user, new_email)
    return user


async def update_unconfirmed(
    db: AsyncSession,
    backends: Backends,
    *,
    user: User,
    session_id: uuid.UUID,
    values: dict[str, Any],
    password: str | None = None,
) -> User:
    """Change one's account the way clients without confirmation steps do (the RealWorld API):
    a new e-mail address takes effect at once, unverified again; a new password needs no current
    one, and then every other session ends, as with `change_password`."""
    if "email" in values and values["email"] != user.email:
        values = {**values, "pending_email": None}
    if values:
        await _apply(db, backends, user, values)
    if password is not None:
        user.password_hash = await backends.security.passwords.hash(password)
        await auth.end_sessions(db, user.id, keep=session_id)
        await db.commit()
        await backends.stores.sessions.user_changed(user.id)
    return user


async def _request_email_change(
    db: AsyncSession, backends: Backends, user: User, new_email: str
) -> None:
    limiter = backends.stores.limiter
    await limiter.hit(limiter.email_change, f"user:{user.id}")
    if new_email == user.email:  # back to the current address: drop what was pending
        if user.pending_email is not None:
            user.pending_email = None
            await db.commit()
        return
    # Whether another account has the address is not told here (that would make this route an
    # oracle of who has an account): emails.verify refuses it when the link is used.
    # Committed with the e-mails queued about it, in one transaction.
    user.pending_email = new_email
    await emails.send_email_change(db, backends, user=user)


async def change_password(
    db: AsyncSession,
    backends: Backends,
    *,
    user: User,
    session_id: uuid.UUID,
    data: PasswordChange,
) -> None:
    """Set a new password; every session but the caller's ends."""
    await _check_current_password(db, backends, user, data.current_password)
    user.password_hash = await backends.security.passwords.hash(data.new_password)
    db.add(user)
    await auth.end_sessions(db, user.id, keep=session_id)
    await db.commit()
    await backends.stores.sessions.user_changed(user.id)


async def _check_current_password(
    db: AsyncSession, backends: Backends, user: User, password: str
) -> None:
    """`WrongPassword`, and wrong guesses counted per account: whoever holds a stolen access
    token gets a handful of tries, not a dictionary."""
    limiter, key = backends.stores.limiter, f"user:{user.id}"
    await limiter.check(limiter.sensitive_account, key)
    current_hash = user.password_hash
    await db.commit()  # hand the connection back while the hash is checked
    if not await backends.security.passwords.verify(current_hash, password):
        await limiter.hit(limiter.sensitive_account, key)
        raise WrongPassword


async def delete(db: AsyncSession, backends: Backends, *, user: User) -> None:
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
    await profiles.forget(db, user.id)
    await db.delete(user)
    await db.commit()
    await images.remove_files(db, backends.media, image_keys)
    await backends.stores.sessions.user_changed(user.id)
    await backends.stores.cache.bump(*ALL_GENERATIONS)  # their posts and likes vanish


async def list_users(
    db: AsyncSession, backends: Backends, *, query: UserListQuery
) -> Page[UserOut] | CursorPage[UserOut]:
    """Every account, oldest first: by offset with the total, or by cursor."""
    if query.cursor is not None:
        return await _users_after(db, backends.cursors, query)
    limit, offset = query.limit, query.offset
    total = await db.scalar(select(func.count()).select_from(User)) or 0
    rows = await db.scalars(select(User).order_by(User.id).limit(limit).offset(offset))
    return Page(items=[to_out(u) for u in rows], total=total, limit=limit, offset=offset)


async def _users_after(
    db: AsyncSession, cursors: Cursors, query: UserListQuery
) -> CursorPage[UserOut]:
    stmt = select(User).order_by(User.id).limit(query.limit + 1)
    if query.cursor:
        try:
            _, last_id = cursors.decode_key(_USERS, query.cursor)
        except BadCursor:
            raise InvalidCursor from None
        stmt = stmt.where(User.id > last_id)
    rows = list(await db.scalars(stmt))
    shown = rows[: query.limit]
    more = len(rows) > query.limit
    next_cursor = cursors.encode_key(_USERS, None, shown[-1].id) if more else None  # id order
    return CursorPage[UserOut](items=[to_out(u) for u in shown], next_cursor=next_cursor)


_USERS = "users"  # the cursors' list


async def admin_update(
    db: AsyncSession, backends: Backends, *, user: User, changes: AdminUserUpdate
) -> User:
    values = changes.changes()
    losing_admin = user.is_admin and (
        values.get("role", user.role) != Role.ADMIN or values.get("is_active") is False
    )
    if losing_admin:
        await _ensure_other_admin(db, user)
    if values.get("is_active") is False:
        await auth.end_sessions(db, user.id)
        await profiles.forget(db, user.id)
    await _apply(db, backends, user, values)
    return user


async def _apply(db: AsyncSession, backends: Backends, user: User, values: dict[str, Any]) -> None:
    """Apply profile changes, commit, and outdate what depended on the old values."""
    access_changed = any(
        field in values and values[field] != getattr(user, field) for field in ("role", "is_active")
    )
    renamed = "username" in values and values["username"] != user.username
    user_image = user.image
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
        await backends.stores.sessions.user_changed(user.id)
    pictured = "image" in values and values["image"] != user_image
    if renamed or pictured or access_changed:
        # Their name and picture are on every post and comment they wrote; a deactivated
        # user's profile, follows and comments are gone.
        await backends.stores.cache.bump(*ALL_GENERATIONS)
    elif values:
        await backends.stores.cache.bump(user_generation(user.id))  # their profile


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
