from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)

from app.schemas.common import (
    CURSOR_MAX_LENGTH,
    NOT_BLANK_PATTERN,
    NUL_FREE_PATTERN,
    NulFreeModel,
    PageQuery,
    PatchModel,
    RequestModel,
    example,
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
    model_config = example(_POST_EXAMPLE)

    title: Title
    summary: Summary | None = None
    content: Content
    published: bool = True
    tags: Tags = Field(default_factory=list)


class PostReplace(RequestModel):
    """PUT: the whole post; every field is required."""

    model_config = example(_POST_EXAMPLE)

    title: Title
    summary: Summary | None = None
    content: Content
    published: bool
    tags: Tags


class PostPatch(PatchModel):
    """PATCH: any subset of the fields; `null` is a value only `summary` takes (it clears it)."""

    NULLABLE = frozenset({"summary"})
    model_config = example({"title": "A better title"})

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
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "title",
    "-title",
    "likes",
    "-likes",
    "relevance",
]
# Deeper than this, `offset` is refused: each skipped row is read. Cursors cost the same at
# any depth.
MAX_OFFSET = 10_000
SEARCH_MAX_LENGTH = 200
# Up to this many matches `total` is exact; beyond it the count stops (`total_exact: false`).
TOTAL_CAP = 1_000


class PostQuery(PageQuery, NulFreeModel):
    """Paging (`limit` with `offset` or `cursor`), sorting and filtering of the post list,
    validated in one place."""

    offset: int = Field(
        0,
        ge=0,
        le=MAX_OFFSET,
        description=f"Items to skip, at most {MAX_OFFSET:,}: deeper, page with `cursor`",
    )
    cursor: str | None = Field(
        None,
        max_length=CURSOR_MAX_LENGTH,
        description="Page by cursor: empty for the first page, then the previous page's "
        "`next_cursor`. The answer is then `{items, next_cursor}` (no `total`), and costs the "
        "same at any depth. Not with `offset`.",
    )
    sort: PostSort = Field(
        "-created_at",
        description="Sort key; `-` prefix for descending. Ties break by id. `relevance` (best "
        "match first) only with `q`.",
    )
    q: str | None = Field(
        None,
        max_length=SEARCH_MAX_LENGTH,
        description="Full-text search in title, summary and content (a title match ranks "
        'highest). Words are all required; `"a phrase"`, `this OR that` and `-without` work as '
        "in web search engines. Whole words, case-insensitive, no stemming.",
    )
    tag: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Repeatable: a post must carry all"
    )
    author: str | None = Field(None, max_length=32, description="The author's username")
    favorited_by: str | None = Field(
        None, max_length=32, description="Only the posts this user (a username) liked"
    )

    @model_validator(mode="after")
    def _paging_and_sort_agree(self) -> PostQuery:
        if self.sort == "relevance" and not self.search:
            raise ValueError("sort=relevance needs a search (`q`)")
        if self.cursor is not None and self.offset:
            raise ValueError("page with either `offset` or `cursor`, not both")
        return self

    @property
    def search(self) -> str | None:
        """The search text, None when there is none (absent or blank)."""
        return self.q if self.q and self.q.strip() else None


class PostPage(BaseModel):
    """A page of posts by `offset`."""

    items: list[PostOut]
    total: int = Field(
        description=f"How many posts match: exact up to {TOTAL_CAP:,} (or up to the end of "
        "this page, when deeper); beyond that the count stops and `total_exact` is false, "
        "`total` then being a lower bound"
    )
    total_exact: bool = Field(description="Whether `total` is the exact count")
    limit: int
    offset: int


class TagCount(BaseModel):
    name: str
    count: int
