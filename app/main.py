"""The application factory: routers, middleware, error handlers and the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.config import Settings, get_settings
from app.database.session import create_engine, create_session_factory
from app.errors import install_error_handlers
from app.logging_setup import configure_logging
from app.middleware import RequestIdMiddleware
from app.routes import health, posts, tags, tokens, users
from app.services import users as user_service
from app.services.security import Security
from app.stores import Stores

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
    {"name": "operations", "description": "Health checks for orchestrators."},
]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    settings.warn_about_production_gaps()
    engine = create_engine(settings)
    app.state.engine = engine
    app.state.session_factory = create_session_factory(engine)
    app.state.security = Security.from_settings(settings)
    app.state.stores = Stores.from_settings(settings)
    if settings.first_admin_email and settings.first_admin_password:
        async with app.state.session_factory() as db:
            await user_service.create_admin(
                db,
                app.state.security,
                settings.first_admin_email,
                settings.first_admin_username,
                settings.first_admin_password.get_secret_value(),
            )
    try:
        yield
    finally:
        await app.state.stores.close()
        await engine.dispose()


def create_app(settings: Settings | None = None, *, configure_logs: bool = True) -> FastAPI:
    settings = settings or get_settings()
    if configure_logs:
        configure_logging(json_lines=settings.environment == "production")
    app = FastAPI(
        title="Inkwell",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.settings = settings

    for module in (tokens, users, posts, tags, health):
        app.include_router(module.router)

    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["ETag", "Location", "X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestIdMiddleware)
    return app
