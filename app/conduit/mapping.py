"""Between RealWorld's shapes and Inkwell's: the translation, and nothing else.

An article is a post (`description` the summary, `body` the content, `tagList` the tags,
favorites the likes), a comment a comment, a profile a profile."""

from __future__ import annotations

from typing import Any

from app.conduit import schemas
from app.models import User
from app.schemas.comment import CommentCreate, CommentOut
from app.schemas.post import PostCreate, PostOut, PostPatch, PostQuery
from app.schemas.profile import Profile
from app.schemas.user import UserCreate


def user(account: User, token: str) -> schemas.UserResponse:
    return schemas.UserResponse(
        user=schemas.User(
            email=account.email,
            token=token,
            username=account.username,
            bio=account.bio or None,
            image=account.image or None,
        )
    )


def new_user(data: schemas.NewUser) -> UserCreate:
    """Inkwell's registration, with RealWorld's password rule: the schema checked the length;
    the common-password list, which RealWorld clients know nothing of, is not applied."""
    return UserCreate.model_construct(
        email=data.email, username=data.username, password=data.password, full_name="", bio=""
    )


def user_changes(data: schemas.UpdateUser) -> dict[str, Any]:
    """The account fields to change (`bio` and `image` null or "" clear them); the password
    apart."""
    values = data.model_dump(exclude_unset=True, include={"email", "username", "bio", "image"})
    if "bio" in values:
        values["bio"] = values["bio"] or ""
    if "image" in values:
        values["image"] = values["image"] or None
    return values


def profile(found: Profile) -> schemas.Profile:
    return schemas.Profile(
        username=found.username,
        bio=found.bio or None,
        image=found.image or None,
        following=found.following,
    )


def absent_profile(username: str, image: str | None) -> schemas.Profile:
    """The author of a post or comment whose profile is gone (a deactivated account)."""
    return schemas.Profile(username=username, bio=None, image=image or None, following=False)


def _article_fields(post: PostOut, author: schemas.Profile) -> dict[str, Any]:
    return {
        "slug": post.slug,
        "title": post.title,
        "description": post.summary or "",
        "tagList": post.tags,
        "createdAt": post.created_at,
        "updatedAt": post.updated_at,
        "favorited": post.liked_by_me,
        "favoritesCount": post.likes,
        "author": author,
    }


def article(post: PostOut, author: schemas.Profile) -> schemas.Article:
    return schemas.Article(**_article_fields(post, author), body=post.content)


def article_item(post: PostOut, author: schemas.Profile) -> schemas.ArticleListItem:
    """An article in a list: without its body."""
    return schemas.ArticleListItem(**_article_fields(post, author))


def post_query(query: schemas.ArticleQuery) -> PostQuery:
    """Newest first, as RealWorld lists them."""
    return PostQuery(
        limit=query.limit,
        offset=query.offset,
        sort="-created_at",
        tag=[query.tag] if query.tag else [],
        author=query.author or None,
        favorited_by=query.favorited or None,
    )


def new_post(data: schemas.NewArticle) -> PostCreate:
    """A published post (RealWorld has no drafts)."""
    return PostCreate.model_validate(
        {
            "title": data.title,
            "summary": data.description,
            "content": data.body,
            "published": True,
            "tags": data.tagList,
        }
    )


def post_changes(data: schemas.UpdateArticle) -> PostPatch:
    names = {"title": "title", "description": "summary", "body": "content", "tagList": "tags"}
    values = data.model_dump(exclude_unset=True)
    return PostPatch.model_validate({names[name]: value for name, value in values.items()})


def new_comment(data: schemas.NewComment) -> CommentCreate:
    return CommentCreate.model_validate({"body": data.body})


def comment(found: CommentOut, author: schemas.Profile) -> schemas.Comment:
    return schemas.Comment(
        id=found.id,
        createdAt=found.created_at,
        updatedAt=found.updated_at,
        body=found.body or "",
        author=author,
    )
