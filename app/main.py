"""The application factory: routers, middleware, error handlers and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from app.conduit import mount_conduit
from app.config import Settings, get_settings
from app.core import password_policy
from app.core.cursors import Cursors
from app.core.logging import configure_logging
from app.core.mail import build_mailer
from app.core.security import Security
from app.core.storage import build_media
from app.database.session import (
    create_engine,
    create_read_session_factory,
    create_session_factory,
)
from app.errors import AppError
from app.routes import (
    comments,
    feed,
    health,
    images,
    media,
    pages,
    password_reset,
    posts,
    profiles,
    tags,
    tasks,
    tokens,
    users,
)
from app.services import images as image_service
from app.services import users as user_service
from app.services.backends import Backends
from app.stores import Stores
from app.tasks.context import JobContext
from app.tasks.jobs import PROCESS_IMAGE, pending_images
from app.tasks.outbox import Outbox
from app.tasks.runner import InProcessRunner, TaskRunner, build_runner
from app.web.docs import install_docs
from app.web.http import single_valued_query
from app.web.middleware import BodyLimitMiddleware, LivenessShortcut, RequestIdMiddleware
from app.web.openapi import install_openapi
from app.web.problems import install_error_handlers

logger = logging.getLogger(__name__)

DESCRIPTION = """
A posts backend: accounts with JWT access and refresh tokens, posts with tags and likes.

Press **Authorize** and log in with your username (or e-mail) and password to try the
routes that need a user. Every error is `application/problem+json` with a stable `code`.
"""

TAGS = [
    {"name": "tokens", "description": "Log in, refresh (with rotation), verify, log out."},
    {"name": "users", "description": "Accounts, profiles, sessions and administration."},
    {"name": "posts", "description": "Posts with tags and likes; drafts stay private."},
    {"name": "images", "description": "Post images, processed into variants in the background."},
    {"name": "tasks", "description": "Background tasks you queued."},
    {"name": "profiles", "description": "Public profiles; follow and unfollow."},
    {"name": "comments", "description": "Comments and replies on posts."},
    {"name": "feed", "description": "The posts of the people you follow."},
    {"name": "operations", "description": "Health checks for orchestrators."},
]


@asynccontextmanager
async def open_backends(
    settings: Settings, engine: AsyncEngine
) -> AsyncIterator[tuple[Backends, JobContext, Outbox]]:
    """What services need beside a database session, built from the settings on `engine` and
    closed afterwards (the outbox's relay is not started): the API's lifespan and the command
    line build them this one way. Also the jobs' context, for the in-process jobs, and the outbox
    whose relay the API starts."""
    session_factory = create_session_factory(engine)
    stores = Stores.from_settings(settings)
    media = build_media(settings)
    jobs = JobContext(settings, session_factory, stores, media, build_mailer(settings))
    runner = build_runner(settings, jobs)
    # The outbox relay polls on a connection of its own, apart from the requests' pool.
    relay_settings = settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    relay_engine = create_engine(relay_settings)
    outbox = Outbox(settings, runner, session_factory, create_session_factory(relay_engine))
    backends = Backends(
        settings,
        stores,
        media,
        runner,
        Security.from_settings(settings),
        create_read_session_factory(engine, settings),
        outbox=outbox,
        cursors=Cursors.from_settings(settings),
    )
    try:
        yield backends, jobs, outbox
    finally:
        await outbox.close()
        await runner.drain()
        await stores.close()
        await media.close()
        await relay_engine.dispose()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    settings.warn_about_production_gaps()
    engine = app.state.engine = create_engine(settings)
    try:
        async with open_backends(settings, engine) as (backends, jobs, outbox):
            app.state.backends = backends
            app.state.session_factory = jobs.session_factory
            app.state.stores = backends.stores
            await _requeue_pending_images(jobs, backends.runner)
            outbox.start()
            deletions = asyncio.create_task(
                image_service.retry_deletions_forever(
                    settings, jobs.session_factory, backends.media
                )
            )
            password_policy.common_passwords()  # read the list now, not in the first request
            await _create_first_admin(backends, jobs.session_factory)
            try:
                yield
            finally:
                deletions.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await deletions
    finally:
        await engine.dispose()


async def _requeue_pending_images(jobs: JobContext, runner: TaskRunner) -> None:
    """In-process jobs die with their process: queue what it left pending again."""
    if not isinstance(runner, InProcessRunner):
        return
    try:
        pending = await pending_images(jobs, older_than_seconds=0)
    except (OSError, SQLAlchemyError):
        logger.warning("could not look for pending images at start-up", exc_info=True)
        return
    for task_id, image_id in pending:
        await runner.enqueue(PROCESS_IMAGE, task_id, image_id=image_id)


async def _create_first_admin(
    backends: Backends, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """FIRST_ADMIN_* creates an administrator, never promotes an existing account (anyone could
    have registered the address before the first start). A refusal is logged as an error and
    the API starts anyway: refusing to start would let whoever registered the address keep the
    service down, and the operator can act on the message (`python -m app create-admin`)."""
    settings = backends.settings
    if not (settings.first_admin_email and settings.first_admin_password):
        return
    async with session_factory() as db:
        try:
            user, outcome = await user_service.create_admin(
                db,
                backends,
                email=settings.first_admin_email,
                username=settings.first_admin_username,
                password=settings.first_admin_password.get_secret_value(),
            )
        except AppError as exc:
            logger.error(
                "FIRST_ADMIN_EMAIL: no administrator created or promoted",
                extra={"reason": exc.message},
            )
            return
    if outcome is not user_service.AdminOutcome.UNCHANGED:
        logger.info("first administrator %s", outcome.value, extra={"username": user.username})


class InkwellApp(FastAPI):
    """FastAPI with the request-id middleware (which also adds the security headers) outside
    everything, Starlette's error middleware included, so that a 500 also carries
    `X-Request-ID` and the security headers, and its log lines the request id; inside it, the
    liveness check's shortcut past routing."""

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        liveness = next(
            (
                context.original_route
                for context in iter_route_contexts(self.router.routes)
                if context.path == "/health" and "GET" in (context.methods or ())
            ),
            None,
        )
        if liveness is not None:
            cors = bool(self.state.settings.cors_origins)
            stack = LivenessShortcut(stack, route=liveness, cors=cors)
        return RequestIdMiddleware(stack)


def create_app(settings: Settings | None = None, *, configure_logs: bool = True) -> FastAPI:
    settings = settings or get_settings()
    if configure_logs:
        configure_logging(json_lines=settings.environment == "production")
    app = InkwellApp(
        title="Inkwell",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        openapi_url=None,  # served by install_docs, like the pages and their assets
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(single_valued_query)],
    )
    app.state.settings = settings
    if settings.docs_enabled:
        install_docs(app)

    routers = (tokens, users, password_reset, posts, images, tags, tasks, health, pages)
    for module in (*routers, profiles, comments, feed):
        app.include_router(module.router)
    settings.media_path.mkdir(parents=True, exist_ok=True)
    app.include_router(media.build_router(settings.media_url))
    mount_conduit(app)
    documented = list(app.router.routes)
    app.router.routes[:] = _reads_first(documented, posts.router)
    install_openapi(app, documented)

    install_error_handlers(app)
    # Inside CORS, so that a browser can read the 413 too.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        routes=app.routes,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["ETag", "Location", "X-Request-ID", "Retry-After"],
        )
    return app


def _reads_first(routes: list[BaseRoute], first: APIRouter) -> list[BaseRoute]:
    """`routes` with the router `first` moved in front of the other included routers: a request
    is matched against the routes in order, and the posts' reads are the most frequent. No
    route of the routers it passes (tokens, users, password reset) matches one of its paths, so
    each request still finds the same route, and a 405 the same partial match; the OpenAPI
    document keeps the order in which the routers were included."""
    included = [route for route in routes if getattr(route, "original_router", None) is first]
    if len(included) != 1:
        return routes
    rest = [route for route in routes if route is not included[0]]
    at = next((i for i, route in enumerate(rest) if hasattr(route, "original_router")), len(rest))
    return [*rest[:at], included[0], *rest[at:]]


def __getattr__(name: str) -> FastAPI:
    """`app`, the application that `uvicorn app.main:app` and `fastapi run` serve, built from
    the environment on first use: importing this module builds nothing (tests and the command
    line call `create_app` with settings of their own)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    application = create_app()
    globals()["app"] = application
    return application
