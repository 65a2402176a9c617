"""The Typer command line: `python -m app --help`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import IntegrityError

from app.config import get_settings

cli = typer.Typer(help="Inkwell: a posts backend.", no_args_is_help=True)


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="A revision id, or head")] = "head",
) -> None:
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

    from app.core.logging import configure_logging

    # The app reads its settings again (in this process or in each worker process): with the
    # address given here, a PUBLIC_URL left unset follows the port actually served.
    if host is not None:
        os.environ["HOST"] = host
    if port is not None:
        os.environ["PORT"] = str(port)
    get_settings.cache_clear()
    settings = get_settings()
    processes = workers or settings.web_concurrency
    # This process's own lines (a worker process that died and was replaced) as the app's.
    configure_logging(json_lines=settings.environment == "production")
    metrics_dir = None
    if processes > 1:
        if not settings.redis_url:
            typer.echo(
                "warning: without REDIS_URL each process has its own cache and rate limits; "
                "run several processes only with Redis",
                err=True,
            )
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # Each worker process writes its metrics here and /metrics adds them up. Local to
            # this server (never the shared data volume: other replicas would mix in).
            metrics_dir = tempfile.mkdtemp(prefix="inkwell-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=processes,
            reload=reload,
            log_config=None,
            proxy_headers=True,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes")] = 2,
    pool: Annotated[str, typer.Option(help="prefork, solo or threads")] = "prefork",
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker for the image and e-mail jobs (needs CELERY_BROKER_URL)."""
    settings = get_settings()
    if not settings.celery_broker_url:
        typer.echo("CELERY_BROKER_URL is not set: jobs run inside the API process.", err=True)
        raise typer.Exit(2)
    from app.core.logging import configure_logging
    from app.tasks.celery_app import celery_app

    configure_logging(json_lines=settings.environment == "production", level=loglevel.upper())
    celery_app.worker_main(
        [
            "worker",
            f"--queues={settings.celery_queue}",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(prompt=True)],
    username: Annotated[str, typer.Option(help="For a new account")] = "admin",
    password: Annotated[
        str | None,
        typer.Option(
            envvar="ADMIN_PASSWORD",
            show_default=False,
            help="Asked for when not given (8-128 characters, not a common password)",
        ),
    ] = None,
    promote_existing: Annotated[
        bool,
        typer.Option(
            "--promote-existing",
            help="Make the existing account with this e-mail an administrator, if its address "
            "is verified (its password stays as it is)",
        ),
    ] = False,
) -> None:
    """Create an administrator. An existing account is promoted only with --promote-existing."""
    from app.database.session import create_engine, create_session_factory
    from app.errors import AppError
    from app.services import users
    from app.services.security import Security

    settings = get_settings()
    if password is None and not promote_existing:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def _create() -> tuple[str, int, users.AdminOutcome]:
        engine = create_engine(settings)
        try:
            async with create_session_factory(engine)() as db:
                user, outcome = await users.create_admin(
                    db,
                    Security.from_settings(settings),
                    email=email,
                    username=username,
                    password=password,
                    promote_existing=promote_existing,
                )
                return user.username, user.id, outcome
        finally:
            await engine.dispose()

    try:
        name, user_id, outcome = asyncio.run(_create())
    except AppError as exc:
        typer.echo(f"create-admin: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    messages = {
        users.AdminOutcome.CREATED: f"administrator {name} (id {user_id}) created",
        users.AdminOutcome.PROMOTED: f"account {name} (id {user_id}) is now an administrator; "
        "its password is unchanged",
        users.AdminOutcome.UNCHANGED: f"{name} (id {user_id}) is already an administrator; "
        "nothing changed (its password neither)",
    }
    typer.echo(messages[outcome])


@cli.command()
def seed(
    users: Annotated[int, typer.Option(min=0, help="Accounts to add")] = 20,
    posts: Annotated[
        int, typer.Option(min=0, help="Posts to add, by random seeded accounts")
    ] = 200,
    password: Annotated[
        str, typer.Option(help="The password of every seeded account", envvar="SEED_PASSWORD")
    ] = "inkwell-seed-password",  # noqa: S107 - fake accounts, named in the output
    random_seed: Annotated[int | None, typer.Option("--seed", help="Repeatable data")] = None,
) -> None:
    """Add realistic fake users and posts (Markdown, tags, drafts), the new users following
    each other, and comments with replies on published posts, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from app.cli import seed as seeding
    from app.database.session import create_engine
    from app.services.security import Security
    from app.stores import Stores

    settings = get_settings()

    async def _seed() -> seeding.SeedResult:
        engine = create_engine(settings)
        columns = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, BarColumn(), transient=False) as bar:
                user_bar = bar.add_task("users", total=users)
                post_bar = bar.add_task("posts", total=posts)
                result = await seeding.seed(
                    engine,
                    Security.from_settings(settings),
                    users=users,
                    posts=posts,
                    password=password,
                    random_seed=random_seed,
                    on_users=lambda n: bar.advance(user_bar, n),
                    on_posts=lambda n: bar.advance(post_bar, n),
                )
        finally:
            await engine.dispose()
        stores = Stores.from_settings(settings)
        try:
            await stores.cache.clear()  # lists cached before the seed are stale now
        finally:
            await stores.close()
        return result

    try:
        result = asyncio.run(_seed())
    except IntegrityError as exc:
        typer.echo(f"the database refused the data: {exc.orig}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"with {result.follows} follows and {result.comments} comments")
    typer.echo(
        f"added {result.users} users and {result.posts} posts; "
        f"seeded accounts log in with the password {result.password!r}"
    )


@cli.command()
def openapi(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="A file; standard output by default")
    ] = None,
) -> None:
    """Write the OpenAPI document (JSON), as `/openapi.json` serves it."""
    from app.main import create_app

    document = json.dumps(create_app(configure_logs=False).openapi(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(document)
    else:
        output.write_text(document)
        typer.echo(f"wrote {output}", err=True)
