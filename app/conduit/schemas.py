"""RealWorld's request and response bodies: every body is wrapped (`{"user": {...}}`).

Requests ignore fields they do not know (frontends send back what they were given, the token
among it) but take values only as their JSON type. Where RealWorld and Inkwell disagree the
rule is stated here: usernames follow Inkwell's character set, passwords RealWorld's length
rule (8 to 128 characters, common ones accepted), `bio` and `image` are `null` when empty."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, field_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from app.core import password_policy
from app.schemas.common import NulFreeModel
from app.schemas.user import Bio, Email, Username

BLANK = "blank"
BLANK_MESSAGE = "can't be blank"

Password = Annotated[
    str,
    Field(
        min_length=password_policy.MIN_LENGTH,
        max_length=password_policy.MAX_LENGTH,
        json_schema_extra={"format": "password"},
    ),
]
Image = Annotated[str, Field(max_length=2048, description="An image URL")]


class ConduitRequest(NulFreeModel):
    model_config = ConfigDict(extra="ignore", strict=True)


def _not_null(value: Any) -> Any:
    """An explicit `null` for a field that has no empty value: refused as blank."""
    if value is None:
        raise PydanticCustomError(BLANK, BLANK_MESSAGE)
    return value


class LoginUser(ConduitRequest):
    email: str = Field(min_length=1, max_length=254, examples=["jake@jake.jake"])
    password: str = Field(min_length=1, max_length=password_policy.MAX_LENGTH)


class LoginBody(ConduitRequest):
    model_config = ConfigDict(
        json_schema_extra={"example": {"user": {"email": "jake@jake.jake", "password": "jakejake"}}}
    )

    user: LoginUser


class NewUser(ConduitRequest):
    username: Username
    email: Email
    password: Password


class NewUserBody(ConduitRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "user": {"username": "jake", "email": "jake@jake.jake", "password": "jakejake"}
            }
        }
    )

    user: NewUser


NOT_NULL = ("email", "username", "password")


class UpdateUser(ConduitRequest):
    """Absent fields stay; `bio` and `image` may be `null` or `""` (both clear them); `email`,
    `username` and `password` may not."""

    email: Email | None = None
    username: Username | None = None
    password: Password | None = None
    bio: Bio | None = None
    image: Image | None = None

    _no_nulls = field_validator(*NOT_NULL, mode="before")(_not_null)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Documents `email`, `username` and `password` as optional, not nullable."""
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        properties = handler.resolve_ref_schema(schema).get("properties", {})
        for name in NOT_NULL:
            field = properties[name]
            branches = [b for b in field.pop("anyOf", []) if b.get("type") != "null"]
            field.update(branches[0])
            field.pop("default", None)
        return schema


class UpdateUserBody(ConduitRequest):
    model_config = ConfigDict(
        json_schema_extra={"example": {"user": {"bio": "I like to skateboard", "image": None}}}
    )

    user: UpdateUser


class User(BaseModel):
    email: str
    token: str
    username: str
    bio: str | None
    image: str | None


class UserResponse(BaseModel):
    user: User


class TagsResponse(BaseModel):
    tags: list[str]


class ErrorResponse(BaseModel):
    """RealWorld's error shape: messages by field, `{"errors": {"body": ["can't be blank"]}}`."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"errors": {"email": ["has already been taken"]}}}
    )

    errors: dict[str, list[str]]
