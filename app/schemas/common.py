from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

T = TypeVar("T")

# What the schema says of text that may not hold NUL (an ECMA and Python regex alike).
NUL_FREE_PATTERN = r"^[^\u0000]*$"
# Text with something in it besides white space, and no NUL.
NOT_BLANK_PATTERN = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


class NulFreeModel(BaseModel):
    """Refuses the NUL character anywhere in its text: PostgreSQL cannot store or compare it.
    Its JSON schema says so: free text gets `NUL_FREE_PATTERN`."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(_has_nul(v) for v in data.values()):
            raise ValueError("text must not contain the NUL character (\\u0000)")
        return data

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        for field in handler.resolve_ref_schema(schema).get("properties", {}).values():
            forbid_nul(field)
        return schema


class RequestModel(NulFreeModel):
    """Base of every request body: unknown fields are refused (no mass assignment), and values
    are taken as their documented JSON type only (`"published": 0` is not `false`)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def forbid_nul(node: dict[str, Any]) -> None:
    """Free text (no pattern, format or fixed values of its own) gets `NUL_FREE_PATTERN`; the
    items of a list and each branch of a union too, as `_has_nul` looks into them."""
    if node.get("type") == "string" and not node.keys() & {"pattern", "format", "enum", "const"}:
        node["pattern"] = NUL_FREE_PATTERN
    if isinstance(node.get("items"), dict):
        forbid_nul(node["items"])
    for branch in node.get("anyOf", []):
        forbid_nul(branch)


class PatchModel(RequestModel):
    """Base of PATCH bodies: absent fields stay as they are; an explicit `null` is refused, and
    its JSON schema says so (the fields are optional, not nullable) -- but for the fields named
    in `NULLABLE`, where `null` clears the value."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        properties = handler.resolve_ref_schema(schema).get("properties", {})
        for name, field in properties.items():
            if name not in cls.NULLABLE:
                branches = [b for b in field.pop("anyOf", []) if b.get("type") != "null"]
                if len(branches) == 1:
                    field.update(branches[0])
                elif branches:
                    field["anyOf"] = branches
            if "default" in field and field["default"] is None:
                del field["default"]
        return schema

    @model_validator(mode="after")
    def _no_nulls(self) -> PatchModel:
        nulls = sorted(
            name for name in self.model_fields_set - self.NULLABLE if getattr(self, name) is None
        )
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


class CursorPage(BaseModel, Generic[T]):
    """A page of a list read by cursor: pass `next_cursor` back as `cursor` for the next one;
    `null` when there is no more."""

    items: list[T]
    next_cursor: str | None = Field(
        description="Opaque; send it as `cursor` for the next page (null: the last page)"
    )


CURSOR_MAX_LENGTH = 512


class CursorQuery(NulFreeModel):
    """`limit` and `cursor` of a list read by cursor."""

    limit: int = Field(20, ge=1, le=100, description="Page size")
    cursor: str | None = Field(
        None,
        max_length=CURSOR_MAX_LENGTH,
        description="`next_cursor` of the previous page; empty or absent for the first page",
    )


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


def problem_responses(*statuses: int, database: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json errors. A route that uses the
    database (`database=True`, every API route) may also answer 503 `database_unavailable`,
    with `Retry-After`, while the database cannot serve it."""
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
        503: "A dependency is unavailable (`database_unavailable`: the database, for a moment): "
        "see `Retry-After`",
    }
    if database and 503 not in statuses:
        statuses = (*statuses, 503)
    responses: dict[int | str, dict[str, Any]] = {
        status: {
            "model": Problem,
            "description": descriptions.get(status, "Error"),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for status in statuses
    }
    if 503 in responses:
        responses[503]["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
    return responses


RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before sending the request again",
    "schema": {"type": "integer", "minimum": 0},
}
