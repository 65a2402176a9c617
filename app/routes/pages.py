"""The pages the links in e-mails open, for deployments without a frontend of their own
(`FRONTEND_URL` unset). A GET only shows a form: link previewers and scanners that fetch the
link spend nothing; the token is spent when the user presses the button."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, status
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from app.dependencies import BackendsDep, DbSession
from app.errors import AppError
from app.schemas.user import PasswordResetConfirm, TokenBody
from app.services import emails, passwords
from app.web.pages import error_list, message, page

router = APIRouter(include_in_schema=False)

_PASSWORD_SCHEMA: dict[str, Any] = PasswordResetConfirm.model_json_schema()["properties"][
    "new_password"
]
PASSWORD_BOUNDS = {
    "min_length": _PASSWORD_SCHEMA["minLength"],
    "max_length": _PASSWORD_SCHEMA["maxLength"],
}

FormField = Annotated[str, Form()]


def _broken_link() -> HTMLResponse:
    return message(
        "Invalid link",
        "This link is incomplete or damaged. Open it again from the e-mail, or ask for a new one.",
        status=status.HTTP_400_BAD_REQUEST,
    )


def _failed(error: AppError) -> HTMLResponse:
    return message(error.title, error.message, status=error.status, headers=error.headers)


def _valid_token(token: str) -> bool:
    try:
        TokenBody(token=token)
    except ValidationError:
        return False
    return True


@router.get("/verify-email")
async def verify_email_page(token: Annotated[str, Query()] = "") -> HTMLResponse:
    if not _valid_token(token):
        return _broken_link()
    return page("Confirm your e-mail address", "verify_email", token=token)


@router.post("/verify-email")
async def verify_email_form(db: DbSession, token: FormField = "") -> HTMLResponse:
    if not _valid_token(token):
        return _broken_link()
    try:
        await emails.verify(db, token=token)
    except AppError as error:
        return _failed(error)
    return message("Address confirmed", "Thank you: your e-mail address is confirmed.")


def _reset_form(token: str, errors: list[str], status_code: int = 200) -> HTMLResponse:
    return page(
        "Choose a new password",
        "reset_password",
        status=status_code,
        raw={"errors": error_list(errors)},
        token=token,
        **PASSWORD_BOUNDS,
    )


@router.get("/reset-password")
async def reset_password_page(token: Annotated[str, Query()] = "") -> HTMLResponse:
    if not _valid_token(token):
        return _broken_link()
    return _reset_form(token, [])


@router.post("/reset-password")
async def reset_password_form(
    db: DbSession,
    backends: BackendsDep,
    token: FormField = "",
    new_password: FormField = "",
    confirm_password: FormField = "",
) -> HTMLResponse:
    if not _valid_token(token):
        return _broken_link()
    try:
        body = PasswordResetConfirm(token=token, new_password=new_password)
    except ValidationError as exc:
        problems = [e["msg"].removeprefix("Value error, ") for e in exc.errors()]
        return _reset_form(token, problems, status.HTTP_422_UNPROCESSABLE_CONTENT)
    if new_password != confirm_password:
        return _reset_form(
            token, ["The two passwords differ."], status.HTTP_422_UNPROCESSABLE_CONTENT
        )
    try:
        await passwords.reset(db, backends, token=body.token, new_password=body.new_password)
    except AppError as error:
        return _failed(error)
    return message(
        "Password changed",
        "Your password is changed and every session of your account has ended: "
        "log in with the new password.",
    )
