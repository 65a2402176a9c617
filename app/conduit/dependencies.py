"""The Conduit token scheme (`Authorization: Token <jwt>`, or `Bearer`) and the signer of its
longer-lived access tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from app.conduit.errors import TokenMissing
from app.config import Settings
from app.core.security import Tokens
from app.dependencies import BackendsDep, DbSession
from app.errors import InvalidToken
from app.models import User
from app.services import auth, users
from app.services.security import Security
from app.web.middleware import set_user

SCHEMES = ("token", "bearer")
MAX_HEADER_LENGTH = 8192

_authorization = APIKeyHeader(
    name="Authorization",
    scheme_name="Token",
    auto_error=False,
    description="`Token <jwt>` (RealWorld's scheme) or `Bearer <jwt>`: the `token` that "
    "registering, logging in or `GET /user` answers with.",
)


def conduit_security(request: Request) -> Security:
    """Inkwell's password hasher, with a token signer whose access tokens live
    CONDUIT_TOKEN_EXPIRE_MINUTES (RealWorld clients cannot refresh); built once per app."""
    state = request.app.state
    security: Security | None = getattr(state, "conduit_security", None)
    if security is None:
        settings: Settings = state.settings
        lifetime = settings.conduit_token_expire_minutes
        tokens = Tokens(settings.model_copy(update={"access_token_expire_minutes": lifetime}))
        security = state.conduit_security = Security(state.security.passwords, tokens)
    return security


def bearer_token(header: Annotated[str | None, Depends(_authorization)]) -> str | None:
    if header is None or not header.strip():
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in SCHEMES or not token or len(header) > MAX_HEADER_LENGTH:
        raise InvalidToken
    return token


Token = Annotated[str | None, Depends(bearer_token)]


async def optional_principal(token: Token, backends: BackendsDep) -> auth.Principal | None:
    if token is None:
        return None
    principal = await auth.principal(
        backends.read_sessions, backends.security, backends.stores.sessions, token
    )
    set_user(principal.id)
    return principal


OptionalPrincipal = Annotated[auth.Principal | None, Depends(optional_principal)]


async def current_principal(principal: OptionalPrincipal) -> auth.Principal:
    if principal is None:
        raise TokenMissing
    return principal


CurrentPrincipal = Annotated[auth.Principal, Depends(current_principal)]


async def current_user(principal: CurrentPrincipal, db: DbSession) -> User:
    return await users.get_signed_in(db, principal.id)


CurrentUser = Annotated[User, Depends(current_user)]
ConduitSecurity = Annotated[Security, Depends(conduit_security)]
