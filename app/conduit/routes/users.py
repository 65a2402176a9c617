from __future__ import annotations

from fastapi import APIRouter, status

from app.conduit import mapping
from app.conduit.dependencies import ConduitSecurity, CurrentPrincipal, CurrentUser, Token
from app.conduit.schemas import LoginBody, NewUserBody, UpdateUserBody, UserResponse
from app.conduit.util import error_responses
from app.dependencies import BackendsDep, ClientDep, DbSession
from app.routes.tokens import NoStoreRoute
from app.services import auth, users

# Every answer carries a token: never stored by a browser or proxy.
router = APIRouter(prefix="/api", tags=["User and Authentication"], route_class=NoStoreRoute)


@router.post(
    "/users/login",
    operation_id="Login",
    summary="Existing user login",
    description="Log in with e-mail and password; answers with the user and a token.",
    response_model=UserResponse,
    responses=error_responses(401, 422, 429),
)
async def login(
    body: LoginBody,
    db: DbSession,
    security: ConduitSecurity,
    backends: BackendsDep,
    client: ClientDep,
) -> UserResponse:
    account = await auth.authenticate(
        db, security, backends.stores.limiter, body.user.email, body.user.password, client
    )
    tokens = await auth.start_session(db, security, account, client)
    return mapping.user(account, tokens.access_token)


@router.post(
    "/users",
    operation_id="CreateUser",
    summary="Register a new user",
    description="Usernames: 3 to 32 characters from a-z, 0-9 and `_`. Passwords: 8 to 128 "
    "characters.",
    status_code=status.HTTP_201_CREATED,
    response_model=UserResponse,
    responses=error_responses(409, 422, 429),
)
async def register(
    body: NewUserBody,
    db: DbSession,
    security: ConduitSecurity,
    backends: BackendsDep,
    client: ClientDep,
) -> UserResponse:
    account, tokens = await users.register(
        db, security, backends, mapping.new_user(body.user), client
    )
    return mapping.user(account, tokens.access_token)


@router.get(
    "/user",
    operation_id="GetCurrentUser",
    summary="Get current user",
    description="The caller's account, with the token it was called with.",
    response_model=UserResponse,
    responses=error_responses(401),
)
async def read_user(account: CurrentUser, token: Token) -> UserResponse:
    assert token is not None, "CurrentUser needs one"
    return mapping.user(account, token)


@router.put(
    "/user",
    operation_id="UpdateCurrentUser",
    summary="Update current user",
    description="Change `email`, `username`, `password`, `bio` or `image`. A new e-mail address "
    "takes effect at once (to be verified again); a new password ends every other session.",
    response_model=UserResponse,
    responses=error_responses(401, 409, 422),
)
async def update_user(
    body: UpdateUserBody,
    account: CurrentUser,
    caller: CurrentPrincipal,
    token: Token,
    db: DbSession,
    backends: BackendsDep,
) -> UserResponse:
    assert token is not None, "CurrentUser needs one"
    await users.update_unconfirmed(
        db,
        backends,
        user=account,
        session_id=caller.session_id,
        values=mapping.user_changes(body.user),
        password=body.user.password,
    )
    return mapping.user(account, token)
