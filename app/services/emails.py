"""E-mail flows: address verification and password reset, with single-use expiring tokens of
which only the SHA-256 is stored."""

from __future__ import annotations

import logging
import secrets
import smtplib
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.core.faults import Delivered, JobBusy, RetryableError, is_transient
from app.core.mail import Mailer, render
from app.core.queue import SEND_EMAIL, JobOutbox
from app.core.security import fingerprint
from app.database.types import utcnow
from app.errors import AppError, EmailTaken
from app.models import EmailToken, OutboxJob, Task, TaskState, TokenPurpose, User
from app.services import auth, tasks
from app.services.backends import Backends
from app.services.security import Client, Security
from app.stores import Stores

logger = logging.getLogger(__name__)


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


async def limit_verification_resend(backends: Backends, user: User) -> None:
    limiter = backends.stores.limiter
    await limiter.hit(limiter.verify_resend, f"user:{user.id}")


async def resend_verification(
    sessions: async_sessionmaker[AsyncSession], backends: Backends, user_id: int
) -> None:
    """Queue another verification e-mail unless the address is verified. Runs after the
    answer (`limit_verification_resend` came before), which is the same either way."""
    async with sessions() as db:
        user = await db.get(User, user_id)
        if user is None:
            return
        if user.pending_email is not None:
            await _send_pending_verification(db, backends, user)
        elif not user.is_verified:
            await send_verification(db, backends, user)


async def send_email_change(db: AsyncSession, backends: Backends, user: User) -> None:
    """Tell the current address that a change to `pending_email` was asked for, and send the
    pending address its link."""
    assert user.pending_email is not None
    notice = _record(
        db,
        backends.outbox,
        user,
        template="email_change_notice",
        subject="Your e-mail address is being changed",
        values={"new_email": user.pending_email},
    )
    await _send_pending_verification(db, backends, user, notice)


async def _send_pending_verification(
    db: AsyncSession, backends: Backends, user: User, *earlier: OutboxJob
) -> None:
    """The link for the pending address; if another account has that address, its owner gets a
    notice instead. The caller's answer is the same either way: no oracle of who has an
    account, and no link that could only fail."""
    settings, pending = backends.settings, user.pending_email
    assert pending is not None
    owner = await db.scalar(select(User).where(User.email == pending))
    if owner is not None:
        await _queue(
            db,
            backends.outbox,
            owner,
            template="email_in_use",
            subject="Someone tried to use your e-mail address",
            values={},
            earlier=earlier,
        )
        return
    hours = settings.email_verify_token_hours
    token = await _new_token(
        db, user, TokenPurpose.VERIFY_EMAIL, timedelta(hours=hours), email=pending
    )
    await _queue(
        db,
        backends.outbox,
        user,
        template="verify_email_change",
        subject="Confirm your new e-mail address",
        values={"link": _link(settings, "verify-email", token), "hours": str(hours)},
        to=pending,
        earlier=earlier,
    )


async def verify(db: AsyncSession, token: str) -> User:
    """Verify the current address, or make the pending one current (409 if another account got
    it meanwhile; the link then stays usable)."""
    row = await _use_token(db, token, TokenPurpose.VERIFY_EMAIL)
    user = await db.get(User, row.user_id)
    if user is None:
        raise EmailTokenInvalid
    if user.pending_email is not None and row.email == user.pending_email:
        if await db.scalar(select(User.id).where(User.email == row.email)):
            raise EmailTaken
        user.email, user.pending_email = row.email, None
    elif user.email != row.email:
        raise EmailTokenInvalid  # the address changed since the link was sent
    user.is_verified = True
    try:
        await db.commit()
    except IntegrityError:  # another account took the address a moment ago
        await db.rollback()
        raise EmailTaken from None
    return user


async def limit_password_reset(backends: Backends, client: Client) -> None:
    limiter = backends.stores.limiter
    await limiter.hit(limiter.password_reset_ip, client.ip)


async def request_password_reset(
    sessions: async_sessionmaker[AsyncSession], backends: Backends, email: str
) -> None:
    """Queue a reset e-mail if the account exists. Runs after the 202 (only
    `limit_password_reset` comes before it), so the answer takes the same time either way."""
    settings = backends.settings
    async with sessions() as db:
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
    db: AsyncSession,
    user: User,
    purpose: TokenPurpose,
    lifetime: timedelta,
    *,
    email: str | None = None,
) -> str:
    token = secrets.token_urlsafe(32)
    db.add(
        EmailToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=fingerprint(token),
            email=email or user.email,
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
    outbox: JobOutbox,
    user: User,
    template: str,
    subject: str,
    values: dict[str, str],
    *,
    to: str | None = None,
    earlier: tuple[OutboxJob, ...] = (),
) -> str:
    """Record the message, commit, and send it (with the `earlier` ones recorded, not sent)."""
    job = _record(db, outbox, user, template, subject, values, to=to)
    await db.commit()  # the messages are recorded with the change they are about
    for recorded in (*earlier, job):
        await outbox.dispatch(recorded)
    return job.task.id


def _record(
    db: AsyncSession,
    outbox: JobOutbox,
    user: User,
    template: str,
    subject: str,
    values: dict[str, str],
    *,
    to: str | None = None,
) -> OutboxJob:
    """The message's task and job, in the caller's transaction."""
    return outbox.record(
        db,
        tasks.new(db, SEND_EMAIL, user.id),
        SEND_EMAIL,
        template=template,
        to=to or user.email,
        subject=subject,
        values={"username": user.username, **values},
    )


def _link(settings: Settings, page: str, token: str) -> str:
    return f"{settings.email_link_base}/{page}?{urlencode({'token': token})}"


# --- Sending: what the `send_email` job does ---------------------------------------------------


async def deliver(
    sessions: async_sessionmaker[AsyncSession],
    *,
    settings: Settings,
    mailer: Mailer,
    task_id: str,
    template: str,
    to: str,
    subject: str,
    values: dict[str, str],
    delivered: bool = False,
) -> dict[str, Any]:
    """Render and send one message, once: the task row is the idempotency key. A copy of the
    job that finds the message sent (or being sent) does not send it again, and every copy
    carries the same Message-ID, so that a mail server can drop a duplicate too. SMTP and
    network errors raise RetryableError; a message sent whose success could not be recorded
    (the database went away) raises Delivered, and its next try (`delivered`) only records."""
    result = {"to": to, "template": template}
    if delivered:
        await tasks.record(sessions, task_id, state=TaskState.SUCCESS, result=result)
        return result
    message = render(template, to, subject, settings.smtp_from, **values)
    message.replace_header("Message-ID", f"<{task_id}@inkwell.local>")
    state = await _claim(sessions, settings, task_id)
    if state is TaskState.STARTED:
        raise JobBusy(f"task {task_id} is being sent by another attempt")
    if state is not None:  # already sent, failed for good, or its user is gone
        logger.info("e-mail already handled", extra={"task_id": task_id, "state": state})
        return {"to": to, "template": template, "duplicate": True}
    try:
        await mailer.send(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise RetryableError(repr(exc)) from exc
    try:
        await tasks.record(sessions, task_id, state=TaskState.SUCCESS, result=result)
    except Exception as exc:
        if is_transient(exc):
            raise Delivered(f"sent; its success not recorded: {exc!r}") from exc
        raise
    return result


async def _claim(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, task_id: str
) -> TaskState | str | None:
    """Mark the task STARTED if no other attempt holds it; None when it is ours to run, else
    its state ("gone" when the task no longer exists). A hold older than the hard time limit
    belongs to an attempt whose worker died: it is taken over."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.task_time_limit_seconds)
    async with sessions() as db:
        claimed = await db.scalar(
            update(Task)
            .where(
                Task.id == task_id,
                or_(
                    Task.state.in_([TaskState.PENDING, TaskState.RETRY]),
                    and_(Task.state == TaskState.STARTED, Task.updated_at < stale),
                ),
            )
            .values(state=TaskState.STARTED, updated_at=now)
            .returning(Task.id)
        )
        current = None if claimed else await db.scalar(select(Task.state).where(Task.id == task_id))
        await db.commit()
    if claimed:
        return None
    return TaskState(current) if current else "gone"
