"""Forgotten passwords: a single-use, expiring link by e-mail, and the reset it allows (every
session ends with it)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.types import utcnow
from app.errors import EmailTokenInvalid
from app.models import EmailToken, TokenPurpose, User
from app.services import auth, emails
from app.services.backends import Backends


async def limit_reset(backends: Backends, *, client: auth.Client) -> None:
    limiter = backends.stores.limiter
    await limiter.hit(limiter.password_reset_ip, client.ip)


async def request_reset(
    sessions: async_sessionmaker[AsyncSession], backends: Backends, *, email: str
) -> None:
    """Queue a reset e-mail if the account exists. Runs after the 202 (only
    `limit_reset` comes before it), so the answer takes the same time either way."""
    settings = backends.settings
    async with sessions() as db:
        user = await db.scalar(select(User).where(User.email == email.lower(), User.is_active))
        if user is None:
            return
        minutes = settings.password_reset_token_minutes
        token = await emails.new_token(
            db, user, TokenPurpose.RESET_PASSWORD, timedelta(minutes=minutes)
        )
        await emails.queue_email(
            db,
            backends.outbox,
            user,
            template="reset_password",
            subject="Reset your password",
            values={
                "link": emails.link(settings, "reset-password", token),
                "minutes": str(minutes),
            },
        )


async def reset(db: AsyncSession, backends: Backends, *, token: str, new_password: str) -> None:
    """Set a new password from a reset link; the link dies, and so does every session."""
    row = await emails.use_token(db, token, TokenPurpose.RESET_PASSWORD)
    user = await db.get(User, row.user_id)
    if user is None or not user.is_active:
        raise EmailTokenInvalid
    await db.commit()  # release the connection while the new password hashes
    user.password_hash = await backends.security.passwords.hash(new_password)
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
    await backends.stores.sessions.user_changed(user.id)
