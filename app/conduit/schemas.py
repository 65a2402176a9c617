"""RealWorld's request and response bodies: every body is wrapped (`{"user": {...}}`).

Requests ignore fields they do not know (frontends send back what they were given, the token
among it) but take values only as their JSON type. Where RealWorld and Inkwell disagree the
rule is stated here: usernames follow Inkwell's character set, passwords RealWorld's length
rule (8 to 128 characters, common ones accepted), `bio` and `image` are `null` when empty."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from app.core import password_policy
from app.schemas.comment import CommentBody
from app.schemas.common import NulFreeModel
from app.schemas.post import MAX_OFFSET, MAX_TAGS, TAG_PATTERN, Title
from app.schemas.user import Bio, Email, ImageUrl, Username

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


def _iso_millis(value: datetime) -> str:
    """As JavaScript's `toISOString()`: `2026-12-07T10:00:00.000Z`."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(_iso_millis, return_type=str, when_used="json")]

# The article's text fields: Inkwell's rules (a post's title, summary and content), none blank.
NOT_BLANK = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
Description = Annotated[
    str, Field(min_length=1, max_length=300, pattern=NOT_BLANK, description="The summary")
]
Body = Annotated[
    str, Field(min_length=1, max_length=50_000, pattern=NOT_BLANK, description="Markdown")
]
TagList = Annotated[
    list[Annotated[str, Field(pattern=TAG_PATTERN)]],
    Field(
        max_length=MAX_TAGS,
        description=f"At most {MAX_TAGS} tags of 1-32 letters, digits, `-` and `_`; they are "
        "lower-cased",
    ),
]


class ConduitRequest(NulFreeModel):
    model_config = ConfigDict(extra="ignore", strict=True)


def _not_null(value: Any) -> Any:
    """An explicit `null` for a field that has no empty value: refused as blank."""
    if value is None:
        raise PydanticCustomError(BLANK, BLANK_MESSAGE)
    return value


def _optional_not_nullable(
    schema: JsonSchemaValue, handler: GetJsonSchemaHandler, names: tuple[str, ...]
) -> JsonSchemaValue:
    """The schema of optional fields that `null` is not a value of."""
    properties = handler.resolve_ref_schema(schema).get("properties", {})
    for name in names:
        field = properties[name]
        branches = [b for b in field.pop("anyOf", []) if b.get("type") != "null"]
        field.update(branches[0])
        field.pop("default", None)
    return schema


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
    image: ImageUrl | None = None

    _no_nulls = field_validator(*NOT_NULL, mode="before")(_not_null)

    @field_validator("image", mode="before")
    @classmethod
    def _empty_image_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Documents `email`, `username` and `password` as optional, not nullable."""
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        return _optional_not_nullable(schema, handler, NOT_NULL)


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


class Profile(BaseModel):
    username: str
    bio: str | None
    image: str | None
    following: bool


class ProfileResponse(BaseModel):
    profile: Profile


MAX_LIMIT = 100


def _at_most_max_limit(value: int) -> int:
    return min(value, MAX_LIMIT)


# RealWorld sets no maximum: a larger `limit` is answered with this many.
Limit = Annotated[
    int,
    Field(
        ge=1, le=2**63 - 1, description=f"How many articles (more than {MAX_LIMIT}: {MAX_LIMIT})"
    ),
    AfterValidator(_at_most_max_limit),
]
Offset = Annotated[int, Field(ge=0, le=1_000_000, description="How many to skip")]


class ArticleQuery(NulFreeModel):
    """The filters and paging of `GET /articles`; `GET /articles/feed` pages the same way."""

    tag: str | None = Field(None, max_length=64, description="Only articles with this tag")
    author: str | None = Field(None, max_length=32, description="Only this user's (a username)")
    favorited: str | None = Field(
        None, max_length=32, description="Only those this user (a username) favorited"
    )
    limit: Limit = 20
    # Deeper than `/api`'s offsets reach is 422, as there (the feed pages its own way).
    offset: Annotated[
        int, Field(ge=0, le=MAX_OFFSET, description=f"How many to skip, at most {MAX_OFFSET:,}")
    ] = 0


class FeedQuery(NulFreeModel):
    limit: Limit = 20
    offset: Offset = 0


class ArticleListItem(BaseModel):
    """An article in a list: everything but its `body`."""

    slug: str
    title: str
    description: str
    tagList: list[str]
    createdAt: Timestamp
    updatedAt: Timestamp
    favorited: bool
    favoritesCount: int
    author: Profile


class Article(ArticleListItem):
    body: str


class ArticleResponse(BaseModel):
    article: Article


class ArticlesResponse(BaseModel):
    articles: list[ArticleListItem]
    articlesCount: int


NOT_NULL_ARTICLE = ("title", "description", "body", "tagList")


class NewArticle(ConduitRequest):
    title: Title
    description: Description
    body: Body
    tagList: TagList = Field(default_factory=list)

    _no_nulls = field_validator(*NOT_NULL_ARTICLE, mode="before")(_not_null)


class NewArticleBody(ConduitRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "article": {
                    "title": "How to train your dragon",
                    "description": "Ever wonder how?",
                    "body": "You have to believe",
                    "tagList": ["reactjs", "angularjs", "dragons"],
                }
            }
        }
    )

    article: NewArticle


class UpdateArticle(ConduitRequest):
    """Absent fields stay; none may be `null` (`"tagList": []` removes every tag)."""

    title: Title | None = None
    description: Description | None = None
    body: Body | None = None
    tagList: TagList | None = None

    _no_nulls = field_validator(*NOT_NULL_ARTICLE, mode="before")(_not_null)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return _optional_not_nullable(
            super().__get_pydantic_json_schema__(core_schema, handler), handler, NOT_NULL_ARTICLE
        )


class UpdateArticleBody(ConduitRequest):
    model_config = ConfigDict(
        json_schema_extra={"example": {"article": {"title": "Did you train your dragon?"}}}
    )

    article: UpdateArticle


class NewComment(ConduitRequest):
    body: CommentBody

    _no_nulls = field_validator("body", mode="before")(_not_null)


class NewCommentBody(ConduitRequest):
    model_config = ConfigDict(
        json_schema_extra={"example": {"comment": {"body": "It takes a Jacobian"}}}
    )

    comment: NewComment


class Comment(BaseModel):
    id: int
    createdAt: Timestamp
    updatedAt: Timestamp
    body: str
    author: Profile


class CommentResponse(BaseModel):
    comment: Comment


class CommentsResponse(BaseModel):
    comments: list[Comment]


class TagsResponse(BaseModel):
    tags: list[str]


class ErrorResponse(BaseModel):
    """RealWorld's error shape: messages by field, `{"errors": {"body": ["can't be blank"]}}`."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"errors": {"email": ["has already been taken"]}}}
    )

    errors: dict[str, list[str]]
