"""Shared dependencies, named once and reused as types in route signatures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, NamedTuple

from fastapi import Depends, Path, Query, Request
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from app.core.context import set_user
from app.database.session import session_scope
from app.database.types import MAX_ID
from app.errors import AdminRequired, Unauthorized
from app.models import Post, User
from app.schemas.post import PostQuery
from app.services import auth, posts, users
from app.services.backends import Backends

_TOKEN_URL = "/api/token"  # noqa: S105  (a path, not a secret)
_BEARER_DESCRIPTION = "Log in with username (or e-mail) and password."
_bearer = OAuth2PasswordBearer(
    tokenUrl=_TOKEN_URL, auto_error=False, description=_BEARER_DESCRIPTION
)


async def get_backends(request: Request) -> Backends:
    """Everything services need beside the database session, built once at start-up."""
    backends: Backends = request.app.state.backends
    return backends


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async for session in session_scope(request.app.state.session_factory):
        yield session


async def get_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """For work that runs after the answer, in sessions of its own."""
    factory: async_sessionmaker[AsyncSession] = request.app.state.session_factory
    return factory


async def get_client(request: Request) -> auth.Client:
    return auth.Client(
        user_agent=request.headers.get("user-agent", ""),
        ip=request.client.host if request.client else "",
    )


DbSession = Annotated[AsyncSession, Depends(get_session)]
SessionFactory = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_factory)]
BackendsDep = Annotated[Backends, Depends(get_backends)]
ClientDep = Annotated[auth.Client, Depends(get_client)]
BearerToken = Annotated[str | None, Depends(_bearer)]


async def optional_principal(token: BearerToken, backends: BackendsDep) -> auth.Principal | None:
    if token is None:
        return None
    principal = await auth.principal(backends, access_token=token)
    set_user(principal.id)
    return principal


async def current_principal(
    principal: Annotated[auth.Principal | None, Depends(optional_principal)],
) -> auth.Principal:
    if principal is None:
        raise Unauthorized
    return principal


CurrentPrincipal = Annotated[auth.Principal, Depends(current_principal)]


class Reader(NamedTuple):
    """A public read's caller (None when anonymous) and the backends, in one dependency."""

    viewer: auth.Principal | None
    backends: Backends


class _OptionalReader(OAuth2PasswordBearer):
    """`optional_principal` and `get_backends` flattened into one dependency for the public
    reads, whose per-request cost is mostly FastAPI's: the bearer token is read straight from
    the Authorization header, with no nested dependencies to resolve. It is the same security
    scheme (name, flow, token URL, description) as `_bearer`, so the OpenAPI document is too."""

    async def __call__(self, request: HTTPConnection) -> Reader:  # type: ignore[override]
        backends: Backends = request.app.state.backends
        authorization = request.headers.get("authorization")
        if not authorization:
            return Reader(None, backends)
        scheme, token = get_authorization_scheme_param(authorization)
        if scheme.lower() != "bearer":
            return Reader(None, backends)
        principal = await auth.principal(backends, access_token=token)
        set_user(principal.id)
        return Reader(principal, backends)


optional_reader = _OptionalReader(
    tokenUrl=_TOKEN_URL,
    auto_error=False,
    description=_BEARER_DESCRIPTION,
    scheme_name=type(_bearer).__name__,
)
PublicReader = Annotated[Reader, Depends(optional_reader)]


OptionalPrincipal = Annotated[auth.Principal | None, Depends(optional_principal)]


async def current_user(principal: CurrentPrincipal, db: DbSession) -> User:
    """The caller's account, loaded for routes that read or change it."""
    return await users.get_signed_in(db, principal.id)


CurrentUser = Annotated[User, Depends(current_user)]


async def admin_principal(principal: CurrentPrincipal) -> auth.Principal:
    if not principal.is_admin:
        raise AdminRequired
    return principal


AdminPrincipal = Annotated[auth.Principal, Depends(admin_principal)]

PostId = Annotated[int, Path(ge=1, le=MAX_ID, description="The post's id")]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="The user's id")]


async def post_by_id(post_id: PostId, db: DbSession, viewer: OptionalPrincipal) -> Post:
    """The post, if it exists and the caller may see it (drafts are 404 to others)."""
    return await posts.get_visible(db, post_id=post_id, viewer=viewer)


VisiblePost = Annotated[Post, Depends(post_by_id)]


async def owned_post(post_id: PostId, db: DbSession, caller: CurrentPrincipal) -> Post:
    """The post, if the caller may change it: its author or an administrator."""
    return posts.ensure_can_edit(
        await posts.get_visible(db, post_id=post_id, viewer=caller), caller
    )


OwnedPost = Annotated[Post, Depends(owned_post)]


async def user_by_id(user_id: UserId, db: DbSession) -> User:
    return await users.get(db, user_id)


UserById = Annotated[User, Depends(user_by_id)]


PostQueryDep = Annotated[PostQuery, Query()]
