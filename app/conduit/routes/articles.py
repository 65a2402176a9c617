from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.conduit import lookups, mapping
from app.conduit.dependencies import CurrentPrincipal, CurrentUser, OptionalPrincipal
from app.conduit.schemas import (
    ArticleQuery,
    ArticleResponse,
    ArticlesResponse,
    FeedQuery,
    NewArticleBody,
    UpdateArticleBody,
)
from app.conduit.util import error_responses
from app.dependencies import BackendsDep, DbSession
from app.schemas.common import NUL_FREE_PATTERN, Page, PageQuery
from app.schemas.post import MAX_OFFSET, PostOut, PostPage
from app.services import feed, posts
from app.services.posts import Viewer

router = APIRouter(prefix="/api", tags=["Articles"])

Slug = Annotated[
    str, Path(max_length=100, pattern=NUL_FREE_PATTERN, description="The article's slug")
]


async def _article(db: DbSession, post: PostOut, viewer: Viewer | None) -> ArticleResponse:
    authors = await lookups.authors(db, [post.author], viewer)
    return ArticleResponse(article=mapping.article(post, authors[post.author.id]))


async def _articles(db: DbSession, page: Page[PostOut], viewer: Viewer | None) -> ArticlesResponse:
    authors = await lookups.authors(db, [post.author for post in page.items], viewer)
    return ArticlesResponse(
        articles=[mapping.article_item(post, authors[post.author.id]) for post in page.items],
        articlesCount=page.total,
    )


@router.get(
    "/articles",
    operation_id="GetArticles",
    summary="Get recent articles globally",
    description="Newest first, filtered by `tag`, `author` or `favorited` (usernames), paged "
    "by `limit` (at most 100) and `offset`. Items carry no `body`. Signed-in authors also see "
    "their own drafts (posts not published on `/api`).",
    response_model=ArticlesResponse,
    responses=error_responses(401, 422),
)
async def list_articles(
    query: Annotated[ArticleQuery, Query()],
    viewer: OptionalPrincipal,
    backends: BackendsDep,
    db: DbSession,
) -> ArticlesResponse:
    listed = mapping.post_query(query)
    body = await posts.list_json(backends, query=listed, viewer=viewer)
    page = PostPage.model_validate_json(body)
    count = page.total
    if not page.total_exact:
        # RealWorld frontends link every page from `articlesCount`: it is counted as deep as
        # an offset may go (`/api`'s own `total` stops sooner).
        count = await posts.count_posts(db, query=listed, viewer=viewer, cap=MAX_OFFSET)
    items = Page[PostOut](items=page.items, total=count, limit=page.limit, offset=page.offset)
    return await _articles(db, items, viewer)


@router.get(
    "/articles/feed",
    operation_id="GetArticlesFeed",
    summary="Get recent articles from users you follow",
    description="Newest first, paged by `limit` (at most 100) and `offset`.",
    response_model=ArticlesResponse,
    responses=error_responses(401, 422),
)
async def read_feed(
    caller: CurrentPrincipal,
    query: Annotated[FeedQuery, Query()],
    backends: BackendsDep,
    db: DbSession,
) -> ArticlesResponse:
    paging = PageQuery(limit=query.limit, offset=query.offset)
    body = await feed.offset_page_json(backends, viewer=caller, query=paging)
    return await _articles(db, Page[PostOut].model_validate_json(body), caller)


@router.post(
    "/articles",
    operation_id="CreateArticle",
    summary="Create an article",
    description="A published post: `description` is its summary, `body` its content (Markdown), "
    "`tagList` its tags (at most 10; letters, digits, `-` and `_`, lower-cased). Equal titles "
    "get distinct slugs.",
    status_code=status.HTTP_201_CREATED,
    response_model=ArticleResponse,
    responses=error_responses(401, 403, 422),
)
async def create_article(
    user: CurrentUser, body: NewArticleBody, db: DbSession, backends: BackendsDep
) -> ArticleResponse:
    post = await posts.create(db, backends, author=user, data=mapping.new_post(body.article))
    return await _article(db, post, user)


@router.get(
    "/articles/{slug}",
    operation_id="GetArticle",
    summary="Get an article",
    response_model=ArticleResponse,
    responses=error_responses(401, 404, 422),
)
async def read_article(
    slug: Slug, viewer: OptionalPrincipal, backends: BackendsDep, db: DbSession
) -> ArticleResponse:
    body = await posts.read_json_by_slug(backends, slug=slug, viewer=viewer)
    return await _article(db, PostOut.model_validate_json(body), viewer)


@router.put(
    "/articles/{slug}",
    operation_id="UpdateArticle",
    summary="Update an article",
    description='Only its author (or an administrator). Absent fields stay; `"tagList": []` '
    "removes every tag. The slug stays what it was; `updatedAt` moves.",
    response_model=ArticleResponse,
    responses=error_responses(401, 403, 404, 422),
)
async def update_article(
    caller: CurrentPrincipal,
    slug: Slug,
    body: UpdateArticleBody,
    db: DbSession,
    backends: BackendsDep,
) -> ArticleResponse:
    post = posts.ensure_can_edit(
        await posts.get_visible_by_slug(db, slug=slug, viewer=caller), caller
    )
    changed = await posts.change(
        db, backends, post=post, changes=mapping.post_changes(body.article), viewer=caller
    )
    return await _article(db, changed, caller)


@router.delete(
    "/articles/{slug}",
    operation_id="DeleteArticle",
    summary="Delete an article",
    description="Only its author (or an administrator); its comments and favorites go with it.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, 422),
)
async def delete_article(
    caller: CurrentPrincipal, slug: Slug, db: DbSession, backends: BackendsDep
) -> Response:
    post = posts.ensure_can_edit(
        await posts.get_visible_by_slug(db, slug=slug, viewer=caller), caller
    )
    await posts.delete_post(db, backends, post=post)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _set_favorite(
    caller: CurrentPrincipal, slug: str, db: DbSession, backends: BackendsDep, *, liked: bool
) -> ArticleResponse:
    post = await posts.get_visible_by_slug(db, slug=slug, viewer=caller)
    await posts.set_like(db, backends, post=post, user=caller, liked=liked)
    body = await posts.read_json(backends, post_id=post.id, viewer=caller)
    return await _article(db, PostOut.model_validate_json(body), caller)


@router.post(
    "/articles/{slug}/favorite",
    operation_id="CreateArticleFavorite",
    summary="Favorite an article",
    description="Idempotent: favoriting twice counts once (a like on `/api`).",
    response_model=ArticleResponse,
    responses=error_responses(401, 404, 422),
)
async def favorite(
    caller: CurrentPrincipal, slug: Slug, db: DbSession, backends: BackendsDep
) -> ArticleResponse:
    return await _set_favorite(caller, slug, db, backends, liked=True)


@router.delete(
    "/articles/{slug}/favorite",
    operation_id="DeleteArticleFavorite",
    summary="Unfavorite an article",
    description="Idempotent.",
    response_model=ArticleResponse,
    responses=error_responses(401, 404, 422),
)
async def unfavorite(
    caller: CurrentPrincipal, slug: Slug, db: DbSession, backends: BackendsDep
) -> ArticleResponse:
    return await _set_favorite(caller, slug, db, backends, liked=False)
