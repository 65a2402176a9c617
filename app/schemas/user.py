from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from app.schemas.common import PatchModel, RequestModel
from app.schemas.token import TokenPair

USERNAME_PATTERN = r"^[a-z0-9_]{3,32}$"


def _lower(value: str) -> str:
    return value.lower()


Email = Annotated[EmailStr, Field(max_length=254), AfterValidator(_lower)]
Username = Annotated[
    str,
    StringConstraints(pattern=USERNAME_PATTERN),
    Field(description="3-32 characters: a-z, 0-9, `_`", examples=["alice"]),
]
Password = Annotated[str, Field(min_length=8, max_length=128)]
FullName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)]
Bio = Annotated[str, Field(max_length=2000)]


class UserCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "email": "alice@example.com",
                "username": "alice",
                "password": "correct horse battery",
                "full_name": "Alice Liddell",
            }
        }
    )

    email: Email
    username: Username
    password: Password
    full_name: FullName = ""
    bio: Bio = ""


class UserUpdate(PatchModel):
    """What users may change about themselves; `role` and friends are refused."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"full_name": "Alice Liddell", "bio": "Writes about tea."}}
    )

    full_name: FullName | None = None
    bio: Bio | None = None
    username: Username | None = None
    email: Email | None = None


class AdminUserUpdate(UserUpdate):
    model_config = ConfigDict(json_schema_extra={"example": {"role": "admin", "is_active": True}})

    role: Literal["user", "admin"] | None = None
    is_active: bool | None = None
    is_verified: bool | None = None


class PasswordChange(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "current_password": "correct horse battery",
                "new_password": "staple battery horse correct",
            }
        }
    )

    current_password: str = Field(min_length=1, max_length=128)
    new_password: Password


class UserPublic(BaseModel):
    id: int
    username: str
    full_name: str
    bio: str
    created_at: datetime


class UserOut(UserPublic):
    email: str
    role: Literal["user", "admin"]
    is_active: bool
    is_verified: bool


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
    model_config = ConfigDict(json_schema_extra={"example": {"token": "Zk9xY2V0aGUtdG9rZW4"}})

    token: str = Field(min_length=1, max_length=512)


class PasswordResetRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"example": {"email": "alice@example.com"}})

    email: Email


class PasswordResetConfirm(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"token": "Zk9xY2V0aGUtdG9rZW4", "new_password": "staple battery horse"}
        }
    )

    token: str = Field(min_length=1, max_length=512)
    new_password: Password
