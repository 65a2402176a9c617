from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from app.schemas.common import NulFreeModel, PatchModel, RequestModel
from app.schemas.image import ImageOut

MAX_TAGS = 10
TAG_PATTERN = re.compile(r"^[a-z0-9-]{1,32}$")


def _normalise_tags(tags: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for raw in tags:
        tag = raw.strip().lower()
        if not TAG_PATTERN.fullmatch(tag):
            raise ValueError(f"invalid tag {raw!r}: use 1-32 of a-z, 0-9 and '-'")
        seen.setdefault(tag, None)
    if len(seen) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} distinct tags")
    return list(seen)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Content = Annotated[str, Field(min_length=1, max_length=50_000), AfterValidator(_not_blank)]
Tags = Annotated[
    list[Annotated[str, Field(max_length=64)]],
    Field(
        max_length=10 * MAX_TAGS,
        description=f"At most {MAX_TAGS} distinct tags, each `^[a-z0-9-]{{1,32}}$` once "
        "lower-cased; duplicates are dropped",
    ),
    AfterValidator(_normalise_tags),
]

_POST_EXAMPLE: dict[str, JsonValue] = {
    "title": "Hello, Inkwell",
    "content": "The *first* post.",
    "published": True,
    "tags": ["intro", "fastapi"],
}


class PostCreate(RequestModel):
    model_config = ConfigDict(json_schema_extra={"example": _POST_EXAMPLE})

    title: Title
    content: Content
    published: bool = True
    tags: Tags = Field(default_factory=list)


class PostReplace(RequestModel):
    """PUT: the whole post; every field is required."""

    model_config = ConfigDict(json_schema_extra={"example": _POST_EXAMPLE})

    title: Title
    content: Content
    published: bool
    tags: Tags


class PostPatch(PatchModel):
    """PATCH: any subset of the fields; `null` is not a value any of them takes."""

    model_config = ConfigDict(json_schema_extra={"example": {"title": "A better title"}})

    title: Title | None = None
    content: Content | None = None
    published: bool | None = None
    tags: Tags | None = None


class AuthorOut(BaseModel):
    id: int
    username: str


class PostOut(BaseModel):
    id: int
    title: str
    content: str
    published: bool
    tags: list[str]
    author: AuthorOut
    images: list[ImageOut]
    likes: int
    liked_by_me: bool
    created_at: datetime
    updated_at: datetime


PostSort = Literal[
    "created_at", "-created_at", "updated_at", "-updated_at", "title", "-title", "likes", "-likes"
]


class PostQuery(NulFreeModel):
    """Paging, sorting and filtering of the post list, validated in one place."""

    limit: int = Field(20, ge=1, le=100, description="Page size")
    offset: int = Field(0, ge=0, le=1_000_000, description="Items to skip")
    sort: PostSort = Field(
        "-created_at", description="Sort key; `-` prefix for descending. Ties break by id."
    )
    q: str | None = Field(
        None,
        max_length=200,
        description="Case-insensitive search in title and content",
    )
    tag: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Repeatable: a post must carry all"
    )
    author: str | None = Field(None, max_length=32, description="The author's username")


class TagCount(BaseModel):
    name: str
    count: int
