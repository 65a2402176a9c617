from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.database.types import MAX_ID
from app.schemas.common import NOT_BLANK_PATTERN, RequestModel

CommentBody = Annotated[
    str,
    Field(
        min_length=1,
        max_length=10_000,
        pattern=NOT_BLANK_PATTERN,
        description="Markdown, 1-10,000 characters",
    ),
]


class CommentCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"body": "Well said!", "parent_id": None}}
    )

    body: CommentBody
    parent_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="The comment (of the same post) replied to"
    )


class CommentUpdate(RequestModel):
    model_config = ConfigDict(json_schema_extra={"example": {"body": "Well said, indeed!"}})

    body: CommentBody


class CommentAuthor(BaseModel):
    id: int
    username: str
    image: str | None


class CommentOut(BaseModel):
    """A comment; a deleted one that has replies stays as a tombstone: `deleted: true`, no
    `body` and no `author`."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 3,
                "post_id": 1,
                "parent_id": None,
                "body": "Well said!",
                "author": {"id": 7, "username": "alice", "image": None},
                "created_at": "2026-12-07T10:00:00Z",
                "updated_at": "2026-12-07T10:00:00Z",
                "deleted": False,
            }
        }
    )

    id: int
    post_id: int
    parent_id: int | None
    body: str | None
    author: CommentAuthor | None
    created_at: datetime
    updated_at: datetime
    deleted: bool
