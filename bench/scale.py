"""Does a page of posts cost the same at 1,000 posts and at 1,000,000?

For each size: a scratch PostgreSQL database (created, migrated, seeded with the CLI's
`python -m app seed --users 1000 --posts N`, dropped at the end), one API process with the
response cache off (CACHE_ENABLED=false, no Redis: every request reaches the database), and one
client sending each request of the table below 7 times after a warm-up; the median is printed,
with the growth from the smallest size to the largest (the target is at most 2x). Then the
same for SQLite (the embedded mode) at one size, to show it stays usable.

    .venv/bin/python bench/scale.py                              # 1,000 and 1,000,000 posts
    .venv/bin/python bench/scale.py --sizes 1000,100000 --sqlite 100000
    make bench-scale

PostgreSQL is found through --admin-url (env BENCH_ADMIN_DATABASE_URL), a URL allowed to CREATE
DATABASE; the databases are named `<--db-prefix><size>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
USERS = 1_000
DEEP = 5_000  # items before the deep cursor page (and the offset)
ABSENT_WORD = "zqxjvwk"
ROWS = [
    ("first page", "first"),
    (f"cursor page {DEEP:,} deep", "cursor"),
    (f"`offset={DEEP}`", "offset"),
    ("`tag=`", "tag"),
    ("`author=`", "author"),
    ("`sort=-likes`", "likes"),
    ("`q=` a common word", "q_common"),
    ("`q=` a word no post has", "q_absent"),
    ("`GET /api/tags`", "tags"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _admin(admin_url: str, statement: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_database(admin_url: str, name: str) -> Iterator[str]:
    asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(admin_url).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def app_env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "CELERY_", "CACHE_"))
    }
    return env | {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "CACHE_ENABLED": "false",
        "RATE_LIMITS_ENABLED": "false",
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "WARNING",
    }


def prepare(env: dict[str, str], posts: int) -> float:
    """Migrates and seeds; returns the seed's seconds."""

    subprocess.run([PYTHON, "-m", "app", "migrate"], env=env, cwd=ROOT, check=True)  # noqa: S603
    started = time.perf_counter()
    subprocess.run(  # noqa: S603
        [PYTHON, "-m", "app", "seed", "--users", str(USERS), "--posts", str(posts), "--seed", "1"],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


@contextlib.contextmanager
def api(env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(  # noqa: S603
            [PYTHON, "-m", "app", "run", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the API did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def requests(client: httpx.Client) -> dict[str, tuple[str, dict[str, Any]]]:
    """The request of each row; what they need (a tag, an author, a word) read from the data."""
    sample = client.get("/api/posts", params={"limit": 100}).json()["items"]
    words = Counter(w for p in sample for w in re.findall(r"[a-z]{4,}", p["content"].lower()))
    common = words.most_common(1)[0][0]
    tag = client.get("/api/tags").json()[0]["name"]
    author = sample[0]["author"]["username"]
    cursor = ""
    for _ in range(DEEP // 100):
        page = client.get("/api/posts", params={"limit": 100, "cursor": cursor}).json()
        cursor = page["next_cursor"] or ""
    return {
        "first": ("/api/posts", {"limit": 20}),
        "cursor": ("/api/posts", {"limit": 20, "cursor": cursor}),
        "offset": ("/api/posts", {"limit": 20, "offset": DEEP}),
        "tag": ("/api/posts", {"limit": 20, "tag": tag}),
        "author": ("/api/posts", {"limit": 20, "author": author}),
        "likes": ("/api/posts", {"limit": 20, "sort": "-likes"}),
        "q_common": ("/api/posts", {"limit": 20, "q": common}),
        "q_absent": ("/api/posts", {"limit": 20, "q": ABSENT_WORD}),
        "tags": ("/api/tags", {}),
    }


def measure(url: str, repeat: int) -> dict[str, float]:
    """Median milliseconds of each row's request."""
    medians: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for key, (path, params) in requests(client).items():
            client.get(path, params=params).raise_for_status()  # warm-up
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                client.get(path, params=params).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
            medians[key] = statistics.median(times)
    return medians


def run_size(backend: str, posts: int, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    with tempfile.TemporaryDirectory(prefix="inkwell-scale-") as tmp:
        data = Path(tmp)
        with contextlib.ExitStack() as stack:
            if backend == "postgresql":
                url = stack.enter_context(
                    postgres_database(args.admin_url, f"{args.db_prefix}{posts}")
                )
            else:
                url = f"sqlite+aiosqlite:///{data / 'scale.db'}"
            env = app_env(url, data)
            print(f"{backend}: seeding {posts:,} posts ...", file=sys.stderr, flush=True)
            seconds = prepare(env, posts)
            print(f"{backend}: seeded in {seconds:.0f} s; measuring", file=sys.stderr, flush=True)
            base = stack.enter_context(api(env, data / "api.log"))
            medians = measure(base, args.repeat)
            shown = ", ".join(f"{key} {ms:.1f}" for key, ms in medians.items())
            print(f"{backend} {posts:,} (ms): {shown}", file=sys.stderr, flush=True)
            return medians, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,1000000", help="PostgreSQL post counts")
    parser.add_argument("--sqlite", type=int, default=100_000, help="SQLite post count (0: off)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--db-prefix", default="inkwell_scale_")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {n: run_size("postgresql", n, args) for n in sizes}
    lite = run_size("sqlite", args.sqlite, args) if args.sqlite else None

    small, large = sizes[0], sizes[-1]
    header = ["`GET /api/posts?limit=20…`", *(f"{n:,} posts" for n in sizes), "growth"]
    if lite:
        header.append(f"SQLite {args.sqlite:,}")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for label, key in ROWS:
        cells = [f"{results[n][0][key]:.1f} ms" for n in sizes]
        growth = results[large][0][key] / results[small][0][key]
        row = [label, *cells, f"{growth:.1f}x"]
        if lite:
            row.append(f"{lite[0][key]:.1f} ms")
        print("| " + " | ".join(row) + " |")
    seeds = ", ".join(f"{n:,} posts {results[n][1]:.0f} s" for n in sizes)
    print(f"\nseed (PostgreSQL): {seeds}" + (f"; SQLite {lite[1]:.0f} s" if lite else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
