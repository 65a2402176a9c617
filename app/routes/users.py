from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Response, status

from app.dependencies import (
    AdminPrincipal,
    BackendsDep,
    ClientDep,
    CurrentPrincipal,
    CurrentUser,
    DbSession,
    SessionFactory,
    UserById,
)
from app.routes.tokens import NO_STORE
from app.schemas.common import CursorPage, Page, problem_responses
from app.schemas.user import (
    AdminUserUpdate,
    PasswordChange,
    ProfileUpdate,
    Registered,
    SessionOut,
    TokenBody,
    UserCreate,
    UserListQuery,
    UserOut,
    UserPublic,
)
from app.services import auth, emails, users

router = APIRouter(prefix="/api/users", tags=["users"])


@router.post(
    "",
    operation_id="users-register",
    summary="Register",
    description="Create an account and log it in: answers with the user and a token pair.",
    status_code=status.HTTP_201_CREATED,
    response_model=Registered,
    responses=problem_responses(409, 413, 422, 429),
)
async def register(
    body: UserCreate,
    response: Response,
    db: DbSession,
    backends: BackendsDep,
    client: ClientDep,
) -> Registered:
    user, tokens = await users.register(db, backends, data=body, client=client)
    response.headers["Location"] = f"/api/users/{user.id}"
    response.headers.update(NO_STORE)  # the body carries tokens
    return Registered(user=users.to_out(user), tokens=tokens)


@router.get(
    "/me",
    operation_id="users-me-read",
    summary="Who am I",
    response_model=UserOut,
    responses=problem_responses(401),
)
async def read_me(user: CurrentUser) -> UserOut:
    return users.to_out(user)


@router.patch(
    "/me",
    operation_id="users-me-update",
    summary="Change my profile",
    description="Change `full_name`, `bio`, `username` or `email`. A new `email` needs "
    "`current_password` in the same body (400 `wrong_password` if wrong; wrong guesses are rate "
    "limited per account) and waits in `pending_email` until the link sent to it is used; "
    "`email`, and password resets, stay with the current address until then. The current "
    "address is told of the change. Whether another account has the new address is not said "
    "here: the link is refused then (409). Sending the current `email` drops a pending change. "
    "E-mail changes are rate limited per account.",
    response_model=UserOut,
    responses=problem_responses(400, 401, 409, 413, 422, 429),
)
async def update_me(
    body: ProfileUpdate, user: CurrentUser, db: DbSession, backends: BackendsDep
) -> UserOut:
    return users.to_out(await users.update(db, backends, user=user, changes=body))


@router.post(
    "/me/password",
    operation_id="users-me-password-change",
    summary="Change my password",
    description="Needs the current password (400 `wrong_password` if wrong; wrong guesses are "
    "rate limited per account). The new one must not be a common password. Every other session "
    "is ended.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(400, 401, 413, 422, 429, 503),
)
async def change_password(
    body: PasswordChange,
    caller: CurrentPrincipal,
    user: CurrentUser,
    db: DbSession,
    backends: BackendsDep,
) -> Response:
    await users.change_password(db, backends, user=user, session_id=caller.session_id, data=body)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/me",
    operation_id="users-me-delete",
    summary="Delete my account",
    description="Deletes the account, its posts and its sessions.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 409, 503),
)
async def delete_me(user: CurrentUser, db: DbSession, backends: BackendsDep) -> Response:
    await users.delete(db, backends, user=user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/me/sessions",
    operation_id="users-me-sessions-list",
    summary="My sessions",
    description="Live sessions (logins), most recently used first; `current` marks this one.",
    response_model=list[SessionOut],
    responses=problem_responses(401),
)
async def list_sessions(caller: CurrentPrincipal, db: DbSession) -> list[SessionOut]:
    return await auth.list_sessions(db, caller)


@router.delete(
    "/me/sessions/{session_id}",
    operation_id="users-me-sessions-end",
    summary="End a session",
    description="Log that session out; its tokens are refused from the next request on.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404, 422, 503),
)
async def end_session(
    session_id: uuid.UUID, caller: CurrentPrincipal, db: DbSession, backends: BackendsDep
) -> Response:
    await auth.end_session(db, backends, user_id=caller.id, session_id=session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/verify",
    operation_id="users-verify-email",
    summary="Verify my e-mail address",
    description="Spend the token from the verification e-mail's link "
    "(`{PUBLIC_URL}/verify-email?token=...`). Single use; it expires. A link sent to a pending "
    "new address makes it the account's `email`; 409 if another account has it by then.",
    response_model=UserOut,
    responses=problem_responses(400, 409, 413, 422),
)
async def verify_email(body: TokenBody, db: DbSession) -> UserOut:
    return users.to_out(await emails.verify(db, token=body.token))


@router.post(
    "/me/verify/resend",
    operation_id="users-me-verify-resend",
    summary="Send the verification e-mail again",
    description="Rate limited per account. Sends the link for a pending new address if there "
    "is one, else for the current address; does nothing for an address already verified.",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(401, 429),
)
async def resend_verification(
    user: CurrentUser, sessions: SessionFactory, backends: BackendsDep, later: BackgroundTasks
) -> Response:
    await emails.limit_verification_resend(backends, user=user)
    later.add_task(emails.resend_verification, sessions, backends, user_id=user.id)
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.get(
    "",
    operation_id="users-list",
    summary="List users (admin)",
    description="Oldest first. With `cursor` (empty for the first page) the answer is a cursor "
    "page, `{items, next_cursor}`; a changed or another list's cursor is 422.",
    response_model=Page[UserOut] | CursorPage[UserOut],
    responses=problem_responses(401, 403, 422),
)
async def list_users(
    _: AdminPrincipal,
    query: Annotated[UserListQuery, Query()],
    db: DbSession,
    backends: BackendsDep,
) -> Page[UserOut] | CursorPage[UserOut]:
    return await users.list_users(db, backends, query=query)


# `:int`: only numbers name a user, so `/api/users/verify` and `/api/users/me` never reach these
# routes (a method they do not serve is 405, not an admin check).
@router.get(
    "/{user_id:int}",
    operation_id="users-read",
    summary="Public profile",
    description="Anyone may read a profile; it never includes the e-mail address.",
    response_model=UserPublic,
    responses=problem_responses(404, 422),
)
async def read_user(user: UserById) -> UserPublic:
    return users.to_public(user)


@router.patch(
    "/{user_id:int}",
    operation_id="users-update",
    summary="Change a user (admin)",
    description="Also `role`, `is_active` and `is_verified`. Deactivating ends every session.",
    response_model=UserOut,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def admin_update(
    _: AdminPrincipal, body: AdminUserUpdate, user: UserById, db: DbSession, backends: BackendsDep
) -> UserOut:
    return users.to_out(await users.admin_update(db, backends, user=user, changes=body))


@router.delete(
    "/{user_id:int}",
    operation_id="users-delete",
    summary="Delete a user (admin)",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def admin_delete(
    _: AdminPrincipal, user: UserById, db: DbSession, backends: BackendsDep
) -> Response:
    await users.delete(db, backends, user=user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
