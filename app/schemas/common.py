from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")


class NulFreeModel(BaseModel):
    """Refuses the NUL character anywhere in its text: PostgreSQL cannot store or compare it."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(_has_nul(v) for v in data.values()):
            raise ValueError("text must not contain the NUL character (\\u0000)")
        return data


class RequestModel(NulFreeModel):
    """Base of every request body: unknown fields are refused (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class PatchModel(RequestModel):
    """Base of PATCH bodies: absent fields stay as they are; an explicit `null` is refused."""

    @model_validator(mode="after")
    def _no_nulls(self) -> PatchModel:
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"null is not a value for: {', '.join(nulls)}")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class PageQuery(BaseModel):
    limit: int = Field(20, ge=1, le=100, description="Page size")
    offset: int = Field(0, ge=0, le=1_000_000, description="Items to skip")


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document; `code` is stable and meant for programs."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "/problems/post-not-found",
                "title": "Not found",
                "status": 404,
                "detail": "No such post.",
                "code": "post_not_found",
            }
        }
    )

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[ValidationIssue] | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json errors."""
    descriptions = {
        400: "The request breaks a rule",
        401: "Missing, invalid, expired or revoked token",
        403: "Not allowed for this user",
        404: "Not found",
        409: "Conflicts with existing data",
        413: "The request body is too large (`MAX_BODY_BYTES`; uploads `MAX_UPLOAD_BYTES`)",
        415: "Unsupported media type",
        422: "Invalid request: see `errors`",
        429: "Too many requests: see `Retry-After`",
        503: "A dependency is unavailable",
    }
    return {
        status: {
            "model": Problem,
            "description": descriptions.get(status, "Error"),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for status in statuses
    }
