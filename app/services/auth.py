"""Logins, token rotation, revocation and the sessions behind them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.security import IssuedToken, Security, TokenClaims, fingerprint
from app.database.types import utcnow
from app.errors import (
    InactiveUser,
    InvalidCredentials,
    RefreshTokenReused,
    SessionNotFound,
    TokenExpired,
    TokenRevoked,
)
from app.models import AuthSession, Role, User
from app.schemas.token import TokenPair
from app.schemas.user import SessionOut
from app.services.backends import Backends
from app.stores.rate_limit import RateLimiter, client_network
from app.stores.sessions import CachedSession

USER_AGENT_MAX = 255


@dataclass(frozen=True, slots=True)
class Client:
    """Who is calling, as recorded on the sessions they open."""

    user_agent: str = ""
    ip: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller, as the access token and its (live) session say."""

    id: int
    session_id: uuid.UUID
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


async def authenticate(
    db: AsyncSession, backends: Backends, *, login: str, password: str, client: Client
) -> User:
    """The user with this username or e-mail and password; the same answer and cost if unknown.

    Rate limited per client address (all attempts), and on failures per account *and* client
    address, under an account-wide ceiling: see `_admit`. Nothing is reset by a success, so
    nobody can clear counters by logging in between guesses.
    """
    limiter, passwords = backends.stores.limiter, backends.security.passwords
    network = client_network(client.ip)
    await limiter.hit(limiter.login_ip, network)
    login = login.strip().lower()
    column = User.email if "@" in login else User.username
    user = await db.scalar(select(User).where(column == login))
    # End the transaction before hashing: no pooled connection waits on the CPU-bound check.
    await db.commit()
    account = f"user:{user.id}" if user else f"login:{login}"
    await _admit(limiter, account, network)
    if not await passwords.verify(user.password_hash if user else None, password):
        await limiter.record(limiter.login_account, account, network)
        await limiter.record(limiter.login_account_ceiling, account)
        await limiter.record(limiter.login_failed_recently, account, network)
        raise InvalidCredentials
    assert user is not None, "verify() is False without a hash"
    if not user.is_active:
        raise InactiveUser
    if limiter.remembers_addresses:
        await limiter.record(limiter.login_known_address, account, network)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = await passwords.hash(password)
    return user


async def _admit(limiter: RateLimiter, account: str, network: str) -> None:
    """Refuse a login before its password is checked, when this client may not guess now.

    A client that failed too often for this account is locked out of it (`login_locked`);
    other clients, the owner's among them, are not. Many clients together stay bounded by the
    account-wide ceiling: while it is full, a client that already failed for the account within
    the ceiling's window waits (`login_throttled`), so each attacking address gets one guess per
    window, unless the account logged in from it lately (the owner's typo at home). A client that
    never failed always has its password checked: an attacker cannot lock the owner out, at the
    price that every fresh address an attacker has buys one more guess.
    """
    await limiter.check(limiter.login_account, account, network)
    ceiling, failed = limiter.login_account_ceiling, limiter.login_failed_recently
    if (
        await limiter.used_up(ceiling, account)
        and await limiter.used_up(failed, account, network)
        and not (
            limiter.remembers_addresses
            and await limiter.used_up(limiter.login_known_address, account, network)
        )
    ):
        # Either window making room lets this client try again.
        wait = min(
            await limiter.retry_after(ceiling, account),
            await limiter.retry_after(failed, account, network),
        )
        raise ceiling.refusal(wait)


async def start_session(
    db: AsyncSession, backends: Backends, *, user: User, client: Client
) -> TokenPair:
    """Open a session for a freshly authenticated user and issue its first token pair."""
    security = backends.security
    session_id = uuid.uuid4()
    expires_at = utcnow() + security.tokens.refresh_ttl
    refresh = security.tokens.issue("refresh", user.id, session_id, expires_at)
    db.add(
        AuthSession(
            id=session_id,
            user_id=user.id,
            refresh_token_hash=fingerprint(refresh.token),
            expires_at=expires_at,
            user_agent=client.user_agent[:USER_AGENT_MAX],
            ip=client.ip,
        )
    )
    await db.commit()
    return _pair(security, refresh)


async def refresh(db: AsyncSession, backends: Backends, *, refresh_token: str) -> TokenPair:
    """Rotate: exchange a refresh token for a new pair, spending it.

    The swap is one conditional UPDATE (a compare-and-set on the stored fingerprint), so of two
    concurrent refreshes with the same token at most one succeeds. A token that is no longer the
    session's current one was stolen or replayed: the whole session ends.
    """
    security = backends.security
    claims = security.tokens.decode(refresh_token, "refresh")
    now = utcnow()
    session = await db.get(AuthSession, claims.session_id)
    if session is None or session.user_id != claims.user_id or session.revoked_at is not None:
        raise TokenRevoked
    if session.expires_at <= now:
        raise TokenExpired
    new_refresh = security.tokens.issue("refresh", claims.user_id, session.id, session.expires_at)
    swapped = await db.execute(
        update(AuthSession)
        .where(
            AuthSession.id == session.id,
            AuthSession.refresh_token_hash == fingerprint(refresh_token),
            AuthSession.revoked_at.is_(None),
            AuthSession.user_id.in_(select(User.id).where(User.is_active)),
        )
        .values(refresh_token_hash=fingerprint(new_refresh.token), last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    if swapped.rowcount != 1:  # type: ignore[attr-defined]
        user_active = await db.scalar(select(User.is_active).where(User.id == claims.user_id))
        await _revoke(db, AuthSession.id == session.id)
        await db.commit()
        await backends.stores.sessions.revoke([session.id])
        raise InactiveUser if not user_active else RefreshTokenReused
    await db.commit()
    return _pair(security, new_refresh)


async def revoke(db: AsyncSession, backends: Backends, *, refresh_token: str) -> None:
    """Log out: end the session the refresh token belongs to."""
    try:
        claims = backends.security.tokens.decode(refresh_token, "refresh")
    except TokenExpired:
        return  # the session has ended by itself
    ended = await _revoke(
        db, AuthSession.id == claims.session_id, AuthSession.user_id == claims.user_id
    )
    # Also when the session had ended already: a logout answered 503 (Redis unreachable) is
    # made good by sending it again.
    tell = ended > 0 or await _owns(db, claims.user_id, claims.session_id)
    await db.commit()
    if tell:
        await backends.stores.sessions.revoke([claims.session_id])


async def verify(db: AsyncSession, backends: Backends, *, token: str) -> None:
    """Check any token: signature, claims, and that its session is still live."""
    claims = backends.security.tokens.decode(token, None)
    session = await db.get(AuthSession, claims.session_id)
    if not _is_live(session, claims) or (
        claims.type == "refresh" and session.refresh_token_hash != fingerprint(token)  # type: ignore[union-attr]
    ):
        raise TokenRevoked
    user_active = await db.scalar(select(User.is_active).where(User.id == claims.user_id))
    if not user_active:
        raise InactiveUser


async def principal(backends: Backends, *, access_token: str) -> Principal:
    """The caller behind an access token, whose session must still be live.

    With Redis the answer usually comes from the session cache; otherwise one primary-key join,
    in a session opened only then.
    """
    sessions = backends.stores.sessions
    claims = backends.security.tokens.decode(access_token, "access")
    lookup = await sessions.lookup(claims.session_id, claims.user_id)
    if lookup.revoked:
        raise TokenRevoked
    if lookup.hit is not None:
        return Principal(claims.user_id, claims.session_id, lookup.hit.role)
    async with backends.read_sessions() as db:
        row = (
            await db.execute(
                select(User.role, User.is_active, AuthSession)
                .join(AuthSession, AuthSession.user_id == User.id)
                .where(User.id == claims.user_id, AuthSession.id == claims.session_id)
            )
        ).first()
    if row is None or not _is_live(row[2], claims):
        raise TokenRevoked
    role, is_active = row[0], row[1]
    if not is_active:
        raise InactiveUser
    await sessions.remember(claims.session_id, CachedSession(claims.user_id, role), lookup)
    return Principal(claims.user_id, claims.session_id, role)


async def list_sessions(db: AsyncSession, caller: Principal) -> list[SessionOut]:
    rows = await db.scalars(
        select(AuthSession)
        .where(
            AuthSession.user_id == caller.id,
            AuthSession.revoked_at.is_(None),
            AuthSession.expires_at > utcnow(),
        )
        .order_by(AuthSession.last_used_at.desc(), AuthSession.id)
    )
    return [
        SessionOut(
            id=s.id,
            created_at=s.created_at,
            last_used_at=s.last_used_at,
            user_agent=s.user_agent,
            ip=s.ip,
            current=s.id == caller.session_id,
        )
        for s in rows
    ]


async def end_session(
    db: AsyncSession, backends: Backends, *, user_id: int, session_id: uuid.UUID
) -> None:
    sessions = backends.stores.sessions
    ended = await _revoke(db, AuthSession.id == session_id, AuthSession.user_id == user_id)
    if not ended:
        # Ended before, perhaps by this same request answered 503 (Redis unreachable): tell
        # Redis again, so that asking twice makes the revocation hold everywhere.
        owned = await _owns(db, user_id, session_id)
        await db.commit()  # nothing changed: the connection goes back before Redis is waited on
        if owned:
            await sessions.revoke([session_id])
        raise SessionNotFound
    await db.commit()
    await sessions.revoke([session_id])


async def end_sessions(db: AsyncSession, user_id: int, *, keep: uuid.UUID | None = None) -> int:
    """End every live session of a user, except `keep`. The caller commits, then tells the
    session cache with `SessionCache.user_changed`."""
    conditions = [AuthSession.user_id == user_id]
    if keep is not None:
        conditions.append(AuthSession.id != keep)
    return await _revoke(db, *conditions)


async def _owns(db: AsyncSession, user_id: int, session_id: uuid.UUID) -> bool:
    """Whether the session is (or was) the user's: only then may Redis be told it ended."""
    found = await db.scalar(
        select(AuthSession.id).where(AuthSession.id == session_id, AuthSession.user_id == user_id)
    )
    return found is not None


async def _revoke(db: AsyncSession, *conditions: object) -> int:
    result = await db.execute(
        update(AuthSession)
        .where(AuthSession.revoked_at.is_(None), *conditions)  # type: ignore[arg-type]
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _is_live(session: AuthSession | None, claims: TokenClaims) -> bool:
    return (
        session is not None
        and session.user_id == claims.user_id
        and session.revoked_at is None
        and session.expires_at > utcnow()
    )


def _pair(security: Security, refresh: IssuedToken) -> TokenPair:
    claims = refresh.claims
    # Never valid past its session's end, so an expired session needs no look-up to refuse.
    access = security.tokens.issue("access", claims.user_id, claims.session_id, claims.expires_at)
    return TokenPair(
        access_token=access.token,
        refresh_token=refresh.token,
        expires_in=int((access.claims.expires_at - utcnow()).total_seconds()),
        refresh_expires_in=max(0, int((claims.expires_at - utcnow()).total_seconds())),
    )
