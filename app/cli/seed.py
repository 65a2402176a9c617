"""Realistic fake data for development and load tests: `python -m app seed --users N --posts M`.

Fast by construction: one Argon2 hash shared by every seeded account (they all log in with the
same password), text drawn from a pool Faker fills once, and bulk inserts in batches. On
PostgreSQL each batch is a COPY (asyncpg's `copy_records_to_table`), its ids taken from the
table's sequence beforehand in one statement, and tag links are copied with the per-row
counting trigger off (in the batch's transaction) and their counts added once per batch; on
SQLite, SQLAlchemy's insertmanyvalues with RETURNING for the new ids.
"""

from __future__ import annotations

import random
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from faker import Faker
from sqlalchemy import Table, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.security import Security
from app.core.slugs import slug_base
from app.models import Comment, Follow, Post, Tag, User
from app.models.post import post_tag

BATCH_SIZE = 2_000
MIN_PASSWORD, MAX_PASSWORD = 8, 128  # as registration asks
TEXT_POOL_SIZE = 1_500
SEED_EMAIL_DOMAIN = "seed.example.com"
TAGS = [
    "python",
    "fastapi",
    "sqlalchemy",
    "postgres",
    "redis",
    "celery",
    "docker",
    "kubernetes",
    "devops",
    "testing",
    "security",
    "api",
    "design",
    "performance",
    "async",
    "typing",
    "rust",
    "go",
    "javascript",
    "css",
    "web",
    "mobile",
    "data",
    "machine-learning",
    "career",
    "writing",
    "travel",
    "food",
    "photography",
    "music",
    "books",
    "gaming",
    "science",
    "space",
    "history",
    "design-systems",
    "open-source",
    "linux",
    "cloud",
    "databases",
    "startups",
    "productivity",
    "health",
    "climate",
]
_NOT_USERNAME = re.compile(r"[^a-z0-9_]")

Progress = Callable[[int], None]


# Each new account follows a few others; each published post gets a few comments, some of
# them replies: a fresh seed shows living feeds and threads.
MAX_FOLLOWS_PER_USER = 12
MAX_COMMENTS_PER_POST = 6
REPLY_SHARE = 0.4


@dataclass(frozen=True)
class SeedResult:
    users: int
    posts: int
    tags: int
    password: str
    follows: int = 0
    comments: int = 0


class _TextPool:
    """Faker is slow per call; a pool of its sentences and paragraphs, drawn at random, reads
    just as real and costs almost nothing per post."""

    def __init__(self, faker: Faker, rng: random.Random) -> None:
        self._rng = rng
        self.titles = [faker.sentence(nb_words=rng.randint(3, 9)).rstrip(".") for _ in range(500)]
        self.paragraphs = [faker.paragraph(nb_sentences=5) for _ in range(TEXT_POOL_SIZE)]
        self.headings = [faker.catch_phrase() for _ in range(200)]

    def title(self) -> str:
        return self._rng.choice(self.titles)[:200]

    def summary(self) -> str:
        return self._rng.choice(self.headings)[:300]

    def comment(self) -> str:
        return self._rng.choice(self.paragraphs)[: self._rng.randint(40, 400)]

    def content(self) -> str:
        """A short Markdown article: a heading, a few paragraphs, sometimes a list."""
        rng = self._rng
        parts = [f"## {rng.choice(self.headings)}", *rng.sample(self.paragraphs, rng.randint(2, 5))]
        if rng.random() < 0.3:
            parts.append("\n".join(f"- {rng.choice(self.headings)}" for _ in range(3)))
        return "\n\n".join(parts)


async def seed(
    engine: AsyncEngine,
    security: Security,
    *,
    users: int,
    posts: int,
    password: str,
    random_seed: int | None = None,
    on_users: Progress | None = None,
    on_posts: Progress | None = None,
) -> SeedResult:
    """Adds `users` accounts and `posts` posts by them (and by earlier seeded accounts when
    `users` is 0). Returns what was added."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"the password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    rng = random.Random(random_seed)  # noqa: S311 - fake data, not secrets
    faker = Faker()
    faker.seed_instance(random_seed)
    password_hash = await security.passwords.hash(password)  # off the loop, once
    now = datetime.now(UTC)

    new_ids = await _insert_users(engine, faker, rng, users, password_hash, now, on_users)
    author_ids = new_ids
    if posts and not author_ids:
        author_ids = await _existing_seed_users(engine)
        if not author_ids:
            raise ValueError("posts need authors: pass --users, or seed some users first")
    follows = await _insert_follows(engine, rng, new_ids, now)
    tag_ids = await _ensure_tags(engine) if posts else []
    comments = await _insert_posts(
        engine, _TextPool(faker, rng), rng, posts, author_ids, tag_ids, now, on_posts
    )
    if engine.dialect.name == "postgresql":
        # Fresh statistics for the planner, as autovacuum would gather later: without them a
        # search for a word no post has may walk the newest-first index instead of one GIN look-up.
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text('ANALYZE "user", post, post_tag, tag, comment, follow'))
    return SeedResult(
        users=users,
        posts=posts,
        tags=len(tag_ids),
        password=password,
        follows=follows,
        comments=comments,
    )


async def _insert_follows(
    engine: AsyncEngine, rng: random.Random, user_ids: Sequence[int], now: datetime
) -> int:
    """Each new account follows a few of the others, at some time in the last months."""
    rows = []
    for follower in user_ids:
        others = rng.sample(user_ids, min(len(user_ids), rng.randint(0, MAX_FOLLOWS_PER_USER)))
        rows += [
            {
                "follower_id": follower,
                "followee_id": followee,
                "created_at": now - timedelta(days=rng.random() * 300),
            }
            for followee in others
            if followee != follower
        ]
    for start in range(0, len(rows), BATCH_SIZE):
        async with engine.begin() as conn:
            await conn.execute(insert(Follow), rows[start : start + BATCH_SIZE])
    return len(rows)


async def _insert_users(
    engine: AsyncEngine,
    faker: Faker,
    rng: random.Random,
    count: int,
    password_hash: str,
    now: datetime,
    progress: Progress | None,
) -> list[int]:
    suffix = secrets.token_hex(4)  # not from --seed: a second run adds new accounts, no clash
    ids: list[int] = []
    for batch in _batches(range(count)):
        rows = []
        for i in batch:
            first, last = faker.first_name(), faker.last_name()
            username = _NOT_USERNAME.sub("", f"{first}_{last}".lower())[:16] + f"_{suffix}{i}"
            rows.append(
                {
                    "email": f"{username}@{SEED_EMAIL_DOMAIN}",
                    "username": username[:32],
                    "password_hash": password_hash,
                    "full_name": f"{first} {last}",
                    "bio": faker.sentence(nb_words=12) if rng.random() < 0.6 else "",
                    "role": "user",
                    "is_active": True,
                    "is_verified": True,
                    "created_at": now - timedelta(days=400 + rng.random() * 400),
                    "updated_at": now,
                }
            )
        ids += await _insert_returning_ids(engine, User, rows)
        if progress:
            progress(len(rows))
    return ids


async def _existing_seed_users(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.scalars(
            select(User.id).where(User.email.endswith(f"@{SEED_EMAIL_DOMAIN}")).limit(100_000)
        )
        return list(rows)


async def _ensure_tags(engine: AsyncEngine) -> list[int]:
    async with engine.begin() as conn:
        existing = set(await conn.scalars(select(Tag.name).where(Tag.name.in_(TAGS))))
        missing = [{"name": name} for name in TAGS if name not in existing]
        if missing:
            await conn.execute(insert(Tag), missing)
        # In TAGS' order: the same `--seed` picks the same tags on either database.
        ids = dict((await conn.execute(select(Tag.name, Tag.id).where(Tag.name.in_(TAGS)))).all())
        return [ids[name] for name in TAGS]


async def _insert_posts(
    engine: AsyncEngine,
    text: _TextPool,
    rng: random.Random,
    count: int,
    author_ids: Sequence[int],
    tag_ids: Sequence[int],
    now: datetime,
    progress: Progress | None,
) -> int:
    """The posts, their tags and comments; returns how many comments."""
    year = timedelta(days=365).total_seconds()
    run = secrets.token_hex(3)  # slugs unique across runs: the pool repeats its titles
    comments = 0
    for batch in _batches(range(count)):
        rows = []
        for i in batch:
            created = now - timedelta(seconds=rng.random() * year)
            title = text.title()
            published = rng.random() < 0.9
            rows.append(
                {
                    "author_id": rng.choice(author_ids),
                    "title": title,
                    "slug": f"{slug_base(title)}-{run}{i}",
                    "summary": text.summary() if rng.random() < 0.7 else None,
                    "content": text.content(),
                    "published": published,
                    "likes": 0,
                    "comments_count": rng.randint(0, MAX_COMMENTS_PER_POST) if published else 0,
                    "created_at": created,
                    "updated_at": min(now, created + timedelta(seconds=rng.random() * 86_400)),
                }
            )
        post_ids = await _insert_returning_ids(engine, Post, rows)
        comments += await _insert_comments(engine, text, rng, post_ids, rows, author_ids, now)
        links = [
            {"post_id": post_id, "tag_id": tag_id}
            for post_id in post_ids
            for tag_id in rng.sample(tag_ids, rng.randint(0, 4))
        ]
        if links:
            await _insert_links(engine, links, rows, post_ids)
        if progress:
            progress(len(rows))
    return comments


async def _insert_comments(
    engine: AsyncEngine,
    text: _TextPool,
    rng: random.Random,
    post_ids: Sequence[int],
    posts: Sequence[dict[str, Any]],
    author_ids: Sequence[int],
    now: datetime,
) -> int:
    """As many comments as each post's counter says: first the top-level ones, then replies to
    them (the ids of the first are needed for the second)."""
    top: list[dict[str, Any]] = []
    replies: list[tuple[int, dict[str, Any]]] = []  # (index in `top` of the parent, row)
    for post_id, post in zip(post_ids, posts, strict=True):
        first_index = len(top)
        for n in range(post["comments_count"]):
            created = min(now, post["created_at"] + timedelta(hours=rng.random() * 240))
            row = {
                "post_id": post_id,
                "author_id": rng.choice(author_ids),
                "body": text.comment(),
                "deleted": False,
                "created_at": created,
                "updated_at": created,
            }
            if n and rng.random() < REPLY_SHARE:
                replies.append((rng.randrange(first_index, len(top)), row))
            else:
                top.append(row)
    if not top:
        return 0
    top_ids = await _insert_returning_ids(engine, Comment, top)
    reply_rows = []
    for parent, row in replies:
        row["parent_id"] = top_ids[parent]
        row["created_at"] = row["updated_at"] = max(row["created_at"], top[parent]["created_at"])
        reply_rows.append(row)
    for start in range(0, len(reply_rows), BATCH_SIZE):
        async with engine.begin() as conn:
            await conn.execute(insert(Comment), reply_rows[start : start + BATCH_SIZE])
    return len(top) + len(reply_rows)


async def _insert_returning_ids(
    engine: AsyncEngine,
    model: type[User] | type[Post] | type[Comment],
    rows: list[dict[str, Any]],
) -> list[int]:
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            table = model.__table__
            assert isinstance(table, Table)
            ids = sorted(
                await conn.scalars(
                    text(
                        "SELECT nextval(pg_get_serial_sequence(:table, 'id'))"
                        " FROM generate_series(1, :n)"
                    ),
                    {"table": f'"{table.name}"', "n": len(rows)},
                )
            )
            await _copy(conn, table, [{**row, "id": i} for row, i in zip(rows, ids, strict=True)])
            return ids
        result = await conn.execute(
            insert(model).returning(model.id, sort_by_parameter_order=True), rows
        )
        return list(result.scalars())


async def _insert_links(
    engine: AsyncEngine,
    links: list[dict[str, Any]],
    posts: Sequence[dict[str, Any]],
    post_ids: Sequence[int],
) -> None:
    """Tag links; on PostgreSQL copied without the per-row counting trigger, the counts of
    the batch then added per tag, in the same transaction (so the trigger is never off for
    anyone else, and the counts are exact)."""
    async with engine.begin() as conn:
        if conn.dialect.name != "postgresql":
            await conn.execute(insert(post_tag), links)
            return
        published = {i for i, post in zip(post_ids, posts, strict=True) if post["published"]}
        added = Counter(link["tag_id"] for link in links if link["post_id"] in published)
        await conn.execute(text("ALTER TABLE post_tag DISABLE TRIGGER post_tag_count"))
        await _copy(conn, post_tag, links)
        await conn.execute(text("ALTER TABLE post_tag ENABLE TRIGGER post_tag_count"))
        for tag_id, n in added.items():
            await conn.execute(
                update(Tag).where(Tag.id == tag_id).values(post_count=Tag.post_count + n)
            )


async def _copy(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    raw = await conn.get_raw_connection()
    await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
        table.name, records=[tuple(row.get(c) for c in columns) for row in rows], columns=columns
    )


def _batches(items: range) -> Iterator[range]:
    for start in range(0, len(items), BATCH_SIZE):
        yield items[start : start + BATCH_SIZE]
