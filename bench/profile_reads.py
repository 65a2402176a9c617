"""Where a read spends its time: cProfile around one uvicorn worker (in this process) while wrk
reads one post with a user's token, with the response cache on and then off.

    .venv/bin/python bench/profile_reads.py [--seconds 5] [--database-url URL]

Uses a scratch SQLite database (or `--database-url`, migrated here) and a redis-server of its own
on a free port. Prints, per run, the share of the profiled time by area (HTTP server, routing
and dependencies, the app, Redis, the database, logging and metrics, ...) and the functions with
the most time of their own. The profiler slows Python code down, evenly enough to show shares.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import uvicorn
from run import LUA_AUTH, ROOT, free_port, wait_for_redis

sys.path.insert(0, str(ROOT))  # this checkout's `app`, whatever the environment has installed

AREAS = (
    ("uvicorn", "HTTP server (uvicorn, httptools)"),
    ("httptools", "HTTP server (uvicorn, httptools)"),
    ("starlette", "routing, dependencies, responses (Starlette/FastAPI)"),
    ("fastapi", "routing, dependencies, responses (Starlette/FastAPI)"),
    ("pydantic", "validation (pydantic)"),
    ("app/stores", "stores (near cache, Redis link)"),
    ("app/web", "middleware"),
    ("app/core/metrics", "metrics and logging"),
    ("prometheus_client", "metrics and logging"),
    ("logging", "metrics and logging"),
    ("app/", "the app (services, routes, auth)"),
    ("jwt", "token decoding (PyJWT)"),
    ("cryptography", "token decoding (PyJWT)"),
    ("hmac", "token decoding (PyJWT)"),
    ("redis", "Redis client"),
    ("sqlalchemy", "database (SQLAlchemy, driver)"),
    ("asyncpg", "database (SQLAlchemy, driver)"),
    ("aiosqlite", "database (SQLAlchemy, driver)"),
    ("sqlite3", "database (SQLAlchemy, driver)"),
    ("asyncio", "event loop"),
    ("selectors", "event loop"),
    ("uvloop", "event loop"),
)


def area(filename: str) -> str:
    for needle, name in AREAS:
        if f"/{needle}" in filename or filename.startswith(f"<{needle}"):
            return name
    if filename.startswith(("~", "<built-in")):
        return "builtins (socket I/O, json, ...)"
    return "other"


def summarize(profile: cProfile.Profile, title: str, top: int) -> str:
    stats = pstats.Stats(profile)
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in raw.values()) or 1.0
    by_area: dict[str, float] = {}
    for (filename, _, _), (_, _, tt, _, _) in raw.items():
        by_area[area(filename)] = by_area.get(area(filename), 0.0) + tt
    lines = [f"== {title}: {total:.2f} s of profiled time", "by area (own time):"]
    for name, seconds in sorted(by_area.items(), key=lambda item: -item[1]):
        lines.append(f"  {seconds / total:6.1%}  {name}")
    lines.append(f"top {top} functions (own time):")
    ranked = sorted(raw.items(), key=lambda item: -item[1][2])[:top]
    for (filename, line, function), (_, calls, tt, _, _) in ranked:
        where = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        lines.append(f"  {tt / total:6.1%}  {calls:>8}  {function} ({where}:{line})")
    return "\n".join(lines)


async def redis_reads(redis_url: str) -> int:
    """Cache reads and session checks Redis has carried out (EVALSHA and MGET calls)."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "mget"))


async def profile_one(
    database_url: str,
    redis_url: str,
    data_dir: Path,
    cache: bool,
    seconds: float,
    top: int,
    connections: int,
    profiled: bool,
) -> str:
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(data_dir),
            "JWT_SECRET_KEY": "profile-secret-profile-secret-profile-secret-0123",
            "RATE_LIMITS_ENABLED": "false",
            "CACHE_ENABLED": "true" if cache else "false",
            "ACCESS_TOKEN_EXPIRE_MINUTES": "120",
        }
    )
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(), configure_logs=True)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base) as client:
        name = f"profile{'c' if cache else 'u'}{os.getpid()}"
        created = await client.post(
            "/api/users",
            json={"username": name, "email": f"{name}@example.com", "password": "Pr0file-pass!"},
        )
        created.raise_for_status()
        token = created.json()["tokens"]["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        post = await client.post(
            "/api/posts",
            json={"title": "Profiled", "content": "Body " * 50, "published": False},
            headers=headers,
        )
        post.raise_for_status()
        url = f"{base}/api/posts/{post.json()['id']}"
        for _ in range(50):
            (await client.get(url, headers=headers)).raise_for_status()
    script = data_dir / "read.lua"
    await asyncio.to_thread(script.write_text, LUA_AUTH.format(token=token))
    reads_before = await redis_reads(redis_url)
    profile = cProfile.Profile()
    if profiled:
        profile.enable()
    wrk = await asyncio.create_subprocess_exec(
        "wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--timeout=10s",
        f"--script={script}", url,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await wrk.communicate()
    profile.disable()
    reads = await redis_reads(redis_url) - reads_before
    server.should_exit = True
    await serving
    lines = out.decode().splitlines()
    rps = next((line for line in lines if "Requests/sec" in line), "")
    done = next((line for line in lines if "requests in" in line), "").split()
    requests = int(done[0]) if done and done[0].isdigit() else 0
    errors = [line.strip() for line in lines if "Socket errors" in line or "Non-2xx" in line]
    title = (
        f"GET /api/posts/{{id}}, cache {'on' if cache else 'off'}, {connections} connections "
        f"({rps.strip()}{', profiled' if profiled else ''}; Redis reads per request: "
        f"{reads / max(requests, 1):.3f}{'; ' + '; '.join(errors) if errors else ''})"
    )
    return summarize(profile, title, top) if profiled else f"== {title}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--cache", choices=("on", "off"), default=None, help="only this run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-profile", action="store_true", help="only the rate and Redis reads")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="inkwell-profile-") as tmp:
        work = Path(tmp)
        database_url = args.database_url or f"sqlite+aiosqlite:///{work / 'profile.db'}"
        env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(work)}
        subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=ROOT, env=env, check=True)
        redis_port = free_port()
        log = work / "redis.log"
        with log.open("wb") as out:
            redis = subprocess.Popen(  # noqa: S603
                [args.redis_server, "--port", str(redis_port), "--save", "", "--dir", tmp],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_redis(redis_port, redis, log, 10)
            runs = [args.cache == "on"] if args.cache else [True, False]
            for cache in runs:
                print(
                    asyncio.run(
                        profile_one(
                            database_url,
                            f"redis://127.0.0.1:{redis_port}/0",
                            work,
                            cache,
                            args.seconds,
                            args.top,
                            args.connections,
                            not args.no_profile,
                        )
                    ),
                    flush=True,
                )
                print()
        finally:
            redis.terminate()
            redis.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
