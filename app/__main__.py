"""Command line: `python -m app --help`."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer

from app.config import get_settings

cli = typer.Typer(help="Inkwell: a posts backend.", no_args_is_help=True)


@cli.command()
def migrate(revision: str = "head") -> None:
    """Apply the Alembic migrations (to `head` by default)."""
    from alembic import command
    from alembic.config import Config

    command.upgrade(Config("alembic.ini"), revision)


@cli.command()
def run(
    host: Annotated[str | None, typer.Option(help="Default: HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="Default: PORT or 8000")] = None,
    workers: Annotated[int | None, typer.Option(help="Default: WEB_CONCURRENCY or 1")] = None,
    reload: bool = False,
) -> None:
    """Serve the API with uvicorn."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.web_concurrency,
        reload=reload,
        log_config=None,
        proxy_headers=True,
    )


@cli.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(prompt=True)],
    username: Annotated[str, typer.Option(prompt=True)] = "admin",
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, envvar="ADMIN_PASSWORD"
        ),
    ] = "",
) -> None:
    """Create an administrator (or promote the account with that e-mail)."""
    from app.database.session import create_engine, create_session_factory
    from app.services import users
    from app.services.security import Security

    settings = get_settings()

    async def _create() -> None:
        engine = create_engine(settings)
        try:
            async with create_session_factory(engine)() as db:
                user = await users.create_admin(
                    db, Security.from_settings(settings), email, username, password
                )
                typer.echo(f"administrator {user.username} (id {user.id}) is ready")
        finally:
            await engine.dispose()

    asyncio.run(_create())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
