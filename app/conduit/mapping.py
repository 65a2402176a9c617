"""Between RealWorld's shapes and Inkwell's: the translation, and nothing else."""

from __future__ import annotations

from typing import Any

from app.conduit import schemas
from app.models import User
from app.schemas.user import UserCreate


def user(account: User, token: str) -> schemas.UserResponse:
    return schemas.UserResponse(
        user=schemas.User(
            email=account.email,
            token=token,
            username=account.username,
            bio=account.bio or None,
            image=None,
        )
    )


def new_user(data: schemas.NewUser) -> UserCreate:
    """Inkwell's registration, with RealWorld's password rule: the schema checked the length;
    the common-password list, which RealWorld clients know nothing of, is not applied."""
    return UserCreate.model_construct(
        email=data.email, username=data.username, password=data.password, full_name="", bio=""
    )


def user_changes(data: schemas.UpdateUser) -> dict[str, Any]:
    """The account fields to change (`bio` null or "" clears it); the password apart."""
    values = data.model_dump(exclude_unset=True, include={"email", "username", "bio"})
    if "bio" in values:
        values["bio"] = values["bio"] or ""
    return values
