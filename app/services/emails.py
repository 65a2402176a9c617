"""E-mail flows: address verification and password reset, with single-use expiring tokens of
which only the SHA-256 is stored."""

from __future__ import annotations

import secrets
from datetime import timedelta
from urllib.parse import urlencode

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.database.types import utcnow
from app.errors import AppError
from app.models import EmailToken, TokenPurpose, User
from app.security import fingerprint
from app.services import auth, tasks
from app.services.backends import Backends
from app.services.security import Client, Security
from app.stores import Stores
from app.tasks.jobs import SEND_EMAIL
from app.tasks.outbox import Outbox


class EmailTokenInvalid(AppError):
    status = 400
    code = "email_token_invalid"
    title = "Invalid or expired link"
    detail = "This link is invalid, expired or already used. Ask for a new one."


async def send_verification(db: AsyncSession, backends: Backends, user: User) -> str:
    """Queue a verification e-mail for the user's current address; returns the task id."""
    settings = backends.settings
    token = await _new_token(
        db, user, TokenPurpose.VERIFY_EMAIL, timedelta(hours=settings.email_verify_token_hours)
    )
    return await _queue(
        db,
        backends.outbox,
        user,
        template="verify_email",
        subject="Confirm your e-mail address",
        values={
            "link": _link(settings, "verify-email", token),
            "hours": str(settings.email_verify_token_hours),
        },
    )


async def resend_verification(db: AsyncSession, backends: Backends, user: User) -> None:
    limiter = backends.stores.limiter
    await limiter.hit(limiter.verify_resend, f"user:{user.id}")
    if not user.is_verified:
        await send_verification(db, backends, user)


async def verify(db: AsyncSession, token: str) -> User:
    row = await _use_token(db, token, TokenPurpose.VERIFY_EMAIL)
    user = await db.get(User, row.user_id)
    if user is None or user.email != row.email:
        raise EmailTokenInvalid  # the address changed since the link was sent
    user.is_verified = True
    await db.commit()
    return user


async def request_password_reset(
    db: AsyncSession, backends: Backends, email: str, client: Client
) -> None:
    """Queue a reset e-mail if the account exists. The caller answers 202 either way."""
    settings, limiter = backends.settings, backends.stores.limiter
    await limiter.hit(limiter.password_reset_ip, client.ip)
    user = await db.scalar(select(User).where(User.email == email.lower(), User.is_active))
    if user is None:
        return
    minutes = settings.password_reset_token_minutes
    token = await _new_token(db, user, TokenPurpose.RESET_PASSWORD, timedelta(minutes=minutes))
    await _queue(
        db,
        backends.outbox,
        user,
        template="reset_password",
        subject="Reset your password",
        values={"link": _link(settings, "reset-password", token), "minutes": str(minutes)},
    )


async def reset_password(
    db: AsyncSession, security: Security, stores: Stores, token: str, new_password: str
) -> None:
    """Set a new password from a reset link; the link dies, and so does every session."""
    row = await _use_token(db, token, TokenPurpose.RESET_PASSWORD)
    user = await db.get(User, row.user_id)
    if user is None or not user.is_active:
        raise EmailTokenInvalid
    await db.commit()  # release the connection while the new password hashes
    user.password_hash = await security.passwords.hash(new_password)
    db.add(user)
    await db.execute(
        update(EmailToken)
        .where(
            EmailToken.user_id == user.id,
            EmailToken.purpose == TokenPurpose.RESET_PASSWORD,
            EmailToken.used_at.is_(None),
        )
        .values(used_at=utcnow())
    )
    await auth.end_sessions(db, user.id)
    await db.commit()
    await stores.sessions.user_changed(user.id)


async def _new_token(
    db: AsyncSession, user: User, purpose: TokenPurpose, lifetime: timedelta
) -> str:
    token = secrets.token_urlsafe(32)
    db.add(
        EmailToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=fingerprint(token),
            email=user.email,
            expires_at=utcnow() + lifetime,
        )
    )
    return token


async def _use_token(db: AsyncSession, token: str, purpose: TokenPurpose) -> EmailToken:
    """Spend a token: one conditional UPDATE, so two concurrent uses cannot both succeed."""
    now = utcnow()
    row = await db.scalar(
        update(EmailToken)
        .where(
            EmailToken.token_hash == fingerprint(token),
            EmailToken.purpose == purpose,
            EmailToken.used_at.is_(None),
            EmailToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(EmailToken)
    )
    if not isinstance(row, EmailToken):
        raise EmailTokenInvalid
    return row


async def _queue(
    db: AsyncSession,
    outbox: Outbox,
    user: User,
    template: str,
    subject: str,
    values: dict[str, str],
) -> str:
    task = tasks.new(db, SEND_EMAIL, user.id)
    job = outbox.record(
        db,
        task,
        SEND_EMAIL,
        template=template,
        to=user.email,
        subject=subject,
        values={"username": user.username, **values},
    )
    await db.commit()  # the message is recorded with the change it is about
    await outbox.dispatch(job)
    return task.id


def _link(settings: Settings, page: str, token: str) -> str:
    return f"{settings.public_url.rstrip('/')}/{page}?{urlencode({'token': token})}"
