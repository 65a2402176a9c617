from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from app.core import password_policy
from app.schemas.common import (
    CURSOR_MAX_LENGTH,
    NulFreeModel,
    PageQuery,
    PatchModel,
    RequestModel,
    example,
)
from app.schemas.token import TokenPair

USERNAME_PATTERN = r"^[a-z0-9_]{3,32}$"


def _lower(value: str) -> str:
    return value.lower()


def _not_common(value: str) -> str:
    if password_policy.is_common(value):
        raise ValueError(password_policy.TOO_COMMON)
    return value


Email = Annotated[EmailStr, Field(max_length=254), AfterValidator(_lower)]
Username = Annotated[
    str,
    StringConstraints(pattern=USERNAME_PATTERN),
    Field(description="3-32 characters: a-z, 0-9, `_`", examples=["alice"]),
]
Password = Annotated[
    str,
    Field(
        min_length=password_policy.MIN_LENGTH,
        max_length=password_policy.MAX_LENGTH,
        description="8-128 characters, not one of the most common passwords",
        json_schema_extra={"format": "password"},
    ),
    AfterValidator(_not_common),
]
# The password the caller has now: only its length is checked, never the policy.
CurrentPassword = Annotated[str, Field(min_length=1, max_length=password_policy.MAX_LENGTH)]
FullName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)]
Bio = Annotated[str, Field(max_length=2000)]
# Only https (a picture shown to others must not be mixed content); never fetched by the server.
IMAGE_URL_PATTERN = r"^https://[^\s/?#\\\u0000@]+(?:[/?#][^\s\u0000]*)?$"
ImageUrl = Annotated[
    str,
    Field(
        max_length=2048,
        pattern=IMAGE_URL_PATTERN,
        description="An https URL of a picture (never fetched by the server); null clears it",
        examples=["https://images.example.com/alice.jpg"],
    ),
]


class UserCreate(RequestModel):
    model_config = example(
        {
            "email": "alice@example.com",
            "username": "alice",
            "password": "correct horse battery",
            "full_name": "Alice Liddell",
        }
    )

    email: Email
    username: Username
    password: Password
    full_name: FullName = ""
    bio: Bio = ""


class UserUpdate(PatchModel):
    """What users may change about themselves; `role` and friends are refused."""

    model_config = example({"full_name": "Alice Liddell", "bio": "Writes about tea."})

    NULLABLE = frozenset({"image"})

    full_name: FullName | None = None
    bio: Bio | None = None
    username: Username | None = None
    email: Email | None = None
    image: ImageUrl | None = None


class ProfileUpdate(UserUpdate):
    """One's own profile; a new `email` needs the current password in the same body."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"email": "alice@example.org", "current_password": "correct horse battery"},
            "dependentRequired": {"email": ["current_password"]},
        }
    )

    current_password: CurrentPassword | None = Field(
        default=None, description="Required with `email`"
    )

    @model_validator(mode="after")
    def _password_with_email(self) -> ProfileUpdate:
        if self.email is not None and self.current_password is None:
            raise ValueError("current_password is required to change the e-mail address")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude={"current_password"})


class AdminUserUpdate(UserUpdate):
    model_config = example({"role": "admin", "is_active": True})

    role: Literal["user", "admin"] | None = None
    is_active: bool | None = None
    is_verified: bool | None = None


class PasswordChange(RequestModel):
    model_config = example(
        {
            "current_password": "correct horse battery",
            "new_password": "staple battery horse correct",
        }
    )

    current_password: CurrentPassword
    new_password: Password


class UserPublic(BaseModel):
    id: int
    username: str
    full_name: str
    bio: str
    created_at: datetime


class UserOut(UserPublic):
    email: str = Field(description="The verified (or registration) address; resets go here")
    pending_email: str | None = Field(
        description="A new address waiting for its verification link, or null"
    )
    role: Literal["user", "admin"]
    is_active: bool
    is_verified: bool
    image: str | None = Field(description="The picture's URL, or null")


class Registered(BaseModel):
    user: UserOut
    tokens: TokenPair


class SessionOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    user_agent: str
    ip: str
    current: bool


class TokenBody(RequestModel):
    model_config = example({"token": "Zk9xY2V0aGUtdG9rZW4"})

    token: str = Field(min_length=1, max_length=512)


class PasswordResetRequest(RequestModel):
    model_config = example({"email": "alice@example.com"})

    email: Email


class PasswordResetConfirm(RequestModel):
    model_config = example({"token": "Zk9xY2V0aGUtdG9rZW4", "new_password": "staple battery horse"})

    token: str = Field(min_length=1, max_length=512)
    new_password: Password


class UserListQuery(PageQuery, NulFreeModel):
    """Paging of the administrators' user list: `limit` with `offset` or `cursor`, by id."""

    cursor: str | None = Field(
        None,
        max_length=CURSOR_MAX_LENGTH,
        description="Page by cursor: empty for the first page, then the previous page's "
        "`next_cursor`. The answer is then `{items, next_cursor}` (no `total`).",
    )

    @model_validator(mode="after")
    def _one_way_of_paging(self) -> UserListQuery:
        if self.cursor is not None and self.offset:
            raise ValueError("page with either `offset` or `cursor`, not both")
        return self
