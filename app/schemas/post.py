from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from app.schemas.common import (
    NOT_BLANK_PATTERN,
    NUL_FREE_PATTERN,
    NulFreeModel,
    PatchModel,
    RequestModel,
)
from app.schemas.image import ImageOut

MAX_TAGS = 10
# As given; stored lower-cased (ASCII only, so the stored tag matches `^[a-z0-9_-]{1,32}$`).
TAG_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"


def _normalise_tags(tags: list[str]) -> list[str]:
    """Lower-cased, duplicates dropped, in their first order."""
    return list(dict.fromkeys(tag.lower() for tag in tags))


# Not blank, and (like all text) free of NUL: said by the pattern, so that the schema says it.
Title = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=NOT_BLANK_PATTERN
    ),
]
Summary = Annotated[
    str,
    Field(max_length=300, pattern=NUL_FREE_PATTERN, description="A short abstract, at most 300"),
]
Content = Annotated[str, Field(min_length=1, max_length=50_000, pattern=NOT_BLANK_PATTERN)]
Tags = Annotated[
    list[Annotated[str, StringConstraints(pattern=TAG_PATTERN)]],
    Field(
        max_length=MAX_TAGS,
        description=f"At most {MAX_TAGS} tags of 1-32 letters, digits, `-` and `_`; they are "
        "lower-cased and duplicates dropped",
    ),
    AfterValidator(_normalise_tags),
]

_POST_EXAMPLE: dict[str, JsonValue] = {
    "title": "Hello, Inkwell",
    "summary": "What this blog is about.",
    "content": "The *first* post.",
    "published": True,
    "tags": ["intro", "fastapi"],
}


class PostCreate(RequestModel):
    model_config = ConfigDict(json_schema_extra={"example": _POST_EXAMPLE})

    title: Title
    summary: Summary | None = None
    content: Content
    published: bool = True
    tags: Tags = Field(default_factory=list)


class PostReplace(RequestModel):
    """PUT: the whole post; every field is required."""

    model_config = ConfigDict(json_schema_extra={"example": _POST_EXAMPLE})

    title: Title
    summary: Summary | None = None
    content: Content
    published: bool
    tags: Tags


class PostPatch(PatchModel):
    """PATCH: any subset of the fields; `null` is not a value any of them takes."""

    model_config = ConfigDict(json_schema_extra={"example": {"title": "A better title"}})

    title: Title | None = None
    summary: Summary | None = None
    content: Content | None = None
    published: bool | None = None
    tags: Tags | None = None


class AuthorOut(BaseModel):
    id: int
    username: str
    image: str | None = Field(description="The author's picture URL, or null")


class PostOut(BaseModel):
    id: int
    slug: str = Field(description="From the title at creation, unique, kept when it changes")
    title: str
    summary: str | None
    content: str
    published: bool
    tags: list[str]
    author: AuthorOut
    images: list[ImageOut]
    likes: int
    liked_by_me: bool
    comments: int = Field(description="How many comments (not counting deleted ones)")
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
    favorited_by: str | None = Field(
        None, max_length=32, description="Only the posts this user (a username) liked"
    )


class TagCount(BaseModel):
    name: str
    count: int
