"""The command line, `python -m app ...`, run as a user runs it: a subprocess with the test run's
settings in its environment, against the run's database (SQLite file or PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.cli.seed import SEED_EMAIL_DOMAIN
from app.config import Settings
from app.models import Comment, Follow, Post, Tag, User
from app.models.post import post_tag
from app.schemas.user import PasswordResetRequest
from tests.conftest import ROOT, make_settings, settings_env
from tests.factories import create_post, login, register

CLI_TIMEOUT_S = 120
COMMANDS = ("run", "worker", "migrate", "create-admin", "seed", "openapi")
DEFAULT_SEED_PASSWORD = "inkwell-seed-password"  # the documented fake-data password
SUMMARY = re.compile(
    r"added (\d+) users and (\d+) posts; seeded accounts log in with the password '([^']+)'"
)


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


async def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The command in a thread, so the event loop (and in-process jobs) keep running."""
    return await asyncio.to_thread(run_cli, settings, *args)


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


async def seeded_user_ids(db: AsyncSession) -> set[int]:
    rows = await db.scalars(select(User.id).where(User.email.endswith(f"@{SEED_EMAIL_DOMAIN}")))
    ids = set(rows)
    await db.rollback()  # no transaction left open while a command writes (SQLite locks)
    return ids


async def post_authors(db: AsyncSession) -> dict[int, int]:
    """Every post's author, by post id."""
    rows = await db.execute(select(Post.id, Post.author_id))
    authors = dict(rows.all())
    await db.rollback()
    return authors


# -- help and openapi --------------------------------------------------------------------------


def test_help_lists_every_command(settings: Settings) -> None:
    output = succeeded(run_cli(settings, "--help"))

    for command in COMMANDS:
        assert re.search(rf"(?<![\w-]){re.escape(command)}(?![\w-])", output), (command, output)


def test_no_command_shows_the_help(settings: Settings) -> None:
    result = run_cli(settings)

    assert "seed" in result.stdout + result.stderr
    assert "openapi" in result.stdout + result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(settings: Settings, command: str) -> None:
    output = succeeded(run_cli(settings, command, "--help"))

    assert "Usage" in output


def test_openapi_writes_the_document_to_a_file(settings: Settings, tmp_path: Path) -> None:
    target = tmp_path / "openapi.json"

    result = run_cli(settings, "openapi", "-o", str(target))

    succeeded(result)
    document = json.loads(target.read_text())
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Inkwell"
    operation_ids = {
        operation["operationId"]
        for path in document["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    assert {"posts-create", "posts-read", "health-ready"} <= operation_ids
    assert {"/api/posts/{post_id}", "/health/ready", "/metrics"} <= set(document["paths"])


def test_openapi_writes_to_standard_output_by_default(settings: Settings, tmp_path: Path) -> None:
    target = tmp_path / "openapi.json"
    succeeded(run_cli(settings, "openapi", "--output", str(target)))

    result = run_cli(settings, "openapi")

    # the same document either way, and nothing else on standard output
    assert json.loads(succeeded(result)) == json.loads(target.read_text())


# -- migrate -----------------------------------------------------------------------------------


def test_migrate_is_idempotent(settings: Settings) -> None:
    # the run's database is at head already: applying the migrations again changes nothing
    for _ in range(2):
        succeeded(run_cli(settings, "migrate"))
    succeeded(run_cli(settings, "migrate", "head"))  # the revision is an argument


# -- seed --------------------------------------------------------------------------------------


async def test_seed_adds_users_and_posts_that_work_through_the_api(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    users_before = await seeded_user_ids(db)
    posts_before = await post_authors(db)

    output = succeeded(await cli(settings, "seed", "--users", "5", "--posts", "50", "--seed", "1"))

    summary = SUMMARY.search(output)
    assert summary is not None, output
    assert summary.group(1, 2) == ("5", "50")
    password = summary.group(3)
    assert password == DEFAULT_SEED_PASSWORD
    seeded = await seeded_user_ids(db) - users_before
    assert len(seeded) == 5
    new_posts = {
        post_id: author
        for post_id, author in (await post_authors(db)).items()
        if post_id not in posts_before
    }
    assert len(new_posts) >= 50
    assert set(new_posts.values()) <= seeded, "every seeded post is by a seeded account"
    tagged = await db.scalar(
        select(func.count(func.distinct(post_tag.c.post_id))).where(
            post_tag.c.post_id.in_(new_posts)
        )
    )
    assert tagged is not None
    assert tagged > 0, "some seeded posts have tags"
    # The tags' counts (copied in bulk on PostgreSQL) are the published posts carrying them.
    counted = await db.execute(
        select(Tag.name, func.count(post_tag.c.post_id))
        .join(post_tag, post_tag.c.tag_id == Tag.id)
        .join(Post, Post.id == post_tag.c.post_id)
        .where(Post.published.is_(True))
        .group_by(Tag.name)
    )
    kept = await db.execute(select(Tag.name, Tag.post_count).where(Tag.post_count > 0))
    assert dict(kept.tuples().all()) == dict(counted.tuples().all())
    await db.rollback()

    # a seeded account logs in with the printed password, and its posts are served
    username = await db.scalar(select(User.username).where(User.id == min(seeded)))
    assert username is not None
    tokens = await login(client, username, password)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    me = await client.get("/api/users/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json()["username"] == username
    assert me.json()["email"].endswith(f"@{SEED_EMAIL_DOMAIN}")
    listing = await client.get("/api/posts", params={"author": username}, headers=headers)
    assert listing.status_code == 200, listing.text
    own = [p for p, author in new_posts.items() if author == min(seeded)]
    assert listing.json()["total"] == len(own)  # drafts included: it is the author asking
    post = next(iter(new_posts))
    read = await client.get(f"/api/posts/{post}", headers=headers)
    assert read.status_code in (200, 404)  # 404: someone else's draft


async def _seeded_posts(url: str) -> list[tuple[str, list[str]]]:
    """Each seeded post (its author has the seed's e-mail domain): its title and tag names."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            names = (
                func.group_concat(Tag.name)
                if engine.dialect.name == "sqlite"
                else func.string_agg(Tag.name, ",")
            )
            rows = await conn.execute(
                select(Post.title, func.coalesce(names, ""))
                .select_from(Post)
                .join(User, User.id == Post.author_id)
                .outerjoin(post_tag, post_tag.c.post_id == Post.id)
                .outerjoin(Tag, Tag.id == post_tag.c.tag_id)
                .where(User.email.endswith(SEED_EMAIL_DOMAIN))
                .group_by(Post.id)
                .order_by(Post.title, Post.id)
            )
            return [(title, sorted(filter(None, tags.split(",")))) for title, tags in rows]
    finally:
        await engine.dispose()


async def test_the_same_seed_gives_the_same_data_on_either_database(
    settings: Settings, tmp_path: Path
) -> None:
    """The suite's database (PostgreSQL in the services run) and a fresh SQLite file."""
    other = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'other.sqlite3'}", tmp_path / "data")
    succeeded(await cli(other, "migrate"))
    for where in (settings, other):
        succeeded(await cli(where, "seed", "--users", "3", "--posts", "30", "--seed", "11"))
    here = await _seeded_posts(str(settings.database_url))
    there = await _seeded_posts(str(other.database_url))
    assert here == there
    assert any(tags for _, tags in here)


async def test_seed_fills_follows_and_comments_for_a_living_feed(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    output = succeeded(await cli(settings, "seed", "--users", "8", "--posts", "80", "--seed", "3"))
    assert re.search(r"with \d+ follows and \d+ comments", output), output
    follows = await db.scalar(select(func.count()).select_from(Follow)) or 0
    stored = await db.scalar(
        select(func.count()).select_from(Comment).where(Comment.deleted.is_(False))
    )
    counted = await db.scalar(select(func.sum(Post.comments_count)))
    assert stored == counted, "every post's counter says how many comments it has"
    assert follows > 0
    assert stored
    slugs = await db.scalar(select(func.count(func.distinct(Post.slug))))
    assert slugs == await db.scalar(select(func.count()).select_from(Post))
    # A seeded reader who follows someone sees a feed, and a post's comments list.
    reader = await db.scalar(
        select(User.username).join(Follow, Follow.follower_id == User.id).limit(1)
    )
    await db.rollback()
    assert reader is not None
    tokens = await login(client, reader, DEFAULT_SEED_PASSWORD)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    feed = await client.get("/api/feed", params={"limit": 100}, headers=headers)
    assert feed.status_code == 200, feed.text
    commented = await db.scalar(select(Post.id).where(Post.comments_count > 0).limit(1))
    listing = await client.get(f"/api/posts/{commented}/comments", params={"limit": 100})
    assert listing.status_code == 200, listing.text
    assert listing.json()["items"]


async def test_seed_with_a_password_option(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    before = await seeded_user_ids(db)

    output = succeeded(
        await cli(settings, "seed", "--users", "1", "--posts", "0", "--password", "another-pass")
    )

    summary = SUMMARY.search(output)
    assert summary is not None, output
    assert summary.group(1, 2, 3) == ("1", "0", "another-pass")
    (user_id,) = await seeded_user_ids(db) - before
    username = await db.scalar(select(User.username).where(User.id == user_id))
    await db.rollback()
    assert username is not None
    await login(client, username, "another-pass")


async def test_seeded_accounts_are_accounts_the_api_accepts(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    # Twice with the same --seed: repeatable text, never the same accounts twice.
    for _ in range(2):
        succeeded(await cli(settings, "seed", "--users", "3", "--posts", "5", "--seed", "7"))
    rows = (await db.execute(select(User.username, User.email))).all()
    await db.rollback()
    assert len(rows) == 6
    for username, email in rows:
        assert re.fullmatch(r"[a-z0-9_]{3,32}", username), username
        PasswordResetRequest.model_validate({"email": email})  # the API's own rule
    response = await client.post("/api/password-reset", json={"email": rows[0][1]})
    assert response.status_code == 202, response.text


async def test_seed_refuses_a_password_registration_would_refuse(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    result = await cli(settings, "seed", "--users", "1", "--posts", "0", "--password", "short")
    assert result.returncode == 2, result
    assert "8 to 128 characters" in result.stderr
    assert not await seeded_user_ids(db)


async def test_seed_posts_only_uses_the_seeded_accounts(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    succeeded(await cli(settings, "seed", "--users", "3", "--posts", "0"))
    seeded = await seeded_user_ids(db)
    assert len(seeded) >= 3
    before = await post_authors(db)

    output = succeeded(await cli(settings, "seed", "--posts", "10", "--users", "0"))

    summary = SUMMARY.search(output)
    assert summary is not None, output
    assert summary.group(1, 2) == ("0", "10")
    new_posts = {p: a for p, a in (await post_authors(db)).items() if p not in before}
    assert len(new_posts) == 10
    assert set(new_posts.values()) <= seeded
    assert await seeded_user_ids(db) == seeded  # no account added


async def test_seed_posts_without_any_seeded_account_is_refused(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    assert not await seeded_user_ids(db), "the database starts clean"
    before = await post_authors(db)

    result = await cli(settings, "seed", "--posts", "5", "--users", "0")

    assert result.returncode == 2, result
    assert "posts need authors" in result.stderr
    assert await post_authors(db) == before


async def test_seed_rejects_a_negative_count(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    before = await post_authors(db)

    result = await cli(settings, "seed", "--users", "-1")

    assert result.returncode == 2, result
    assert await post_authors(db) == before


async def test_seeded_posts_are_listed_at_once_by_a_running_api(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings
) -> None:
    # The API (this test's app) has the post list cached before the seed runs; the command
    # says it clears the caches, so the running API must not serve the stale list.
    account = await register(client)
    await create_post(client, account)
    cached = (await client.get("/api/posts")).json()
    assert cached["total"] == 1

    succeeded(await cli(settings, "seed", "--users", "2", "--posts", "20", "--seed", "3"))

    published = await db.scalar(select(func.count(Post.id)).where(Post.published.is_(True)))
    await db.rollback()
    listing = await client.get("/api/posts")
    assert listing.status_code == 200
    assert listing.json()["total"] == published, "a stale list, cached before the seed"
