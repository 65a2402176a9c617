"""Password hashing and JWTs: the primitives the auth service builds on, and `Security`, the
bag of both that the process builds once."""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio.to_thread
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.config import Settings
from app.database.types import MAX_ID, utcnow
from app.errors import InvalidToken, TokenExpired

TokenType = Literal["access", "refresh"]
VERIFIED_CACHE_SIZE = 10_000
# The last second a datetime can hold (9999-12-31T23:59:59Z): a later `exp` is no token of ours.
MAX_EXPIRY = 253_402_300_799
# What parsing the claims of a validly signed but absurd token raises besides PyJWT's errors.
MALFORMED_CLAIMS = (TypeError, ValueError, OverflowError, RecursionError)


class Passwords:
    """Argon2id hashing, always in a worker thread: a hash costs tens of milliseconds of CPU."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the account does not exist, so both paths cost one hash.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    @property
    def parameters(self) -> str:
        h = self._hasher
        return f"argon2id m={h.memory_cost} KiB, t={h.time_cost}, p={h.parallelism}"

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await anyio.to_thread.run_sync(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        return password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    session_id: uuid.UUID
    token_id: str
    type: TokenType
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: TokenClaims


class Tokens:
    """Signs and checks JWTs with the one algorithm configured; nothing in the token chooses it."""

    def __init__(self, settings: Settings) -> None:
        self._algorithm = settings.jwt_algorithm
        self._signing_key = settings.jwt_signing_key()
        self._verifying_key = settings.jwt_verifying_key()
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.access_ttl = timedelta(minutes=settings.access_token_expire_minutes)
        self.refresh_ttl = timedelta(days=settings.refresh_token_expire_days)
        self._verified: dict[str, TokenClaims] = {}

    def issue(
        self,
        type_: TokenType,
        user_id: int,
        session_id: uuid.UUID,
        expires_at: datetime | None = None,
    ) -> IssuedToken:
        now = utcnow()
        ttl = self.access_ttl if type_ == "access" else self.refresh_ttl
        exp = min(now + ttl, expires_at) if expires_at else now + ttl
        claims = TokenClaims(user_id, session_id, uuid.uuid4().hex, type_, exp)
        payload = {
            "sub": str(user_id),
            "type": type_,
            "jti": claims.token_id,
            "sid": str(session_id),
            "iat": now,
            "exp": exp,
            "iss": self._issuer,
            "aud": self._audience,
        }
        return IssuedToken(jwt.encode(payload, self._signing_key, self._algorithm), claims)

    def decode(self, token: str, expected_type: TokenType | None) -> TokenClaims:
        """Check signature, algorithm, expiry, issuer, audience and type (None: either type).

        A token verified before is found in a small cache keyed by the whole token, signature
        included, so only its expiry and type are checked again; PyJWT's checks cost more than
        the rest of a cached read.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))  # the oldest entry
            self._verified[token] = claims
        if claims.expires_at.timestamp() <= time.time():
            raise TokenExpired
        if expected_type and claims.type != expected_type:
            raise InvalidToken(f"Wrong token type: expected {expected_type}.")
        return claims

    def _verify(self, token: str) -> TokenClaims:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["sub", "type", "jti", "sid", "iat", "exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired from exc
        except (jwt.InvalidTokenError, *MALFORMED_CLAIMS) as exc:
            # PyJWT lets some absurd claims of a validly signed token through as Python errors
            # (an infinite `iat`, a deeply nested payload): all of them are an invalid token.
            raise InvalidToken from exc
        type_ = payload["type"]
        if type_ not in ("access", "refresh"):
            raise InvalidToken("Unknown token type.")
        try:
            user_id = int(payload["sub"])
            if not 0 < user_id <= MAX_ID:
                raise ValueError("subject out of range")
            return TokenClaims(
                user_id=user_id,
                session_id=uuid.UUID(str(payload["sid"])),
                token_id=str(payload["jti"]),
                type=type_,
                expires_at=_expiry(payload["exp"]),
            )
        except MALFORMED_CLAIMS as exc:
            raise InvalidToken from exc


def _expiry(exp: object) -> datetime:
    """`exp` as a datetime: a finite number of seconds that a datetime can hold (PyJWT has
    already checked that it is in the future)."""
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise ValueError("exp is not a finite number")
    if not 0 < exp <= MAX_EXPIRY:
        raise ValueError("exp out of range")
    return datetime.fromtimestamp(int(exp), tz=UTC)


def fingerprint(token: str) -> str:
    """What the database keeps of a refresh token: its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Security:
    """The process-wide password hasher and token signer, built once from settings."""

    passwords: Passwords
    tokens: Tokens

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        return cls(Passwords(settings), Tokens(settings))
