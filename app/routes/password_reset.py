from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, Response, status

from app.dependencies import BackendsDep, ClientDep, DbSession, SessionFactory
from app.schemas.common import problem_responses
from app.schemas.user import PasswordResetConfirm, PasswordResetRequest
from app.services import passwords

router = APIRouter(prefix="/api/password-reset", tags=["users"])


@router.post(
    "",
    operation_id="password-reset-request",
    summary="Ask for a password reset",
    description="Always 202, whether or not the address has an account (no enumeration), and "
    "in the same time: the account is looked up after the answer. For a real account, an "
    "e-mail with a single-use link (`{PUBLIC_URL}/reset-password?token=...`, or "
    "`{FRONTEND_URL}/...` when set) is queued. Rate limited per IP.",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(413, 422, 429),
)
async def request_reset(
    body: PasswordResetRequest,
    sessions: SessionFactory,
    backends: BackendsDep,
    client: ClientDep,
    later: BackgroundTasks,
) -> Response:
    await passwords.limit_reset(backends, client=client)
    # Whether the account exists is looked up after the answer, never before it.
    later.add_task(passwords.request_reset, sessions, backends, email=body.email)
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.post(
    "/confirm",
    operation_id="password-reset-confirm",
    summary="Set a new password",
    description="Spend the token from the reset e-mail. Every session of the account ends.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(400, 413, 422, 503),
)
async def confirm_reset(
    body: PasswordResetConfirm, db: DbSession, backends: BackendsDep
) -> Response:
    await passwords.reset(db, backends, token=body.token, new_password=body.new_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
