"""Inkwell's HTTP benchmark: wrk against one API worker on loopback, beside a FastAPI hello-world.

Creates a scratch PostgreSQL database (migrated, seeded, dropped at the end), its own
redis-server, one API process with the response cache on and then one with it off, and
bench/hello.py. Prints requests/s, p50 and p99 per scenario with the ratio to hello-world, the
login rate with the Argon2id parameters, and the read p99 during a login burst beside the idle
one. Writes the same figures to bench/results/latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PYTHON = sys.executable

WRK_MISSING = """\
wrk is not installed; the benchmark drives its load with it. Install it from Debian's packages:

    sudo apt-get update && sudo apt-get install -y wrk

then run `make bench` again."""

USERS = 3
TAGS = 30
READER = 1  # index of the user whose token the reads carry
LOGGER_USER = 2  # index of the user the login burst logs in as

# Targets from the issue: ratios to hello-world at the base concurrency.
TARGETS = {
    ("read", "cached"): 0.50,
    ("list", "cached"): 0.40,
    ("read", "uncached"): 0.30,
    ("list", "uncached"): 0.12,
    ("health", "-"): 0.80,
}
# The cached read at the high and the top concurrency, as a share of its rate at the base one.
LOAD_SHARE_TARGET = 0.80
BURST_P99_TARGET = 2.0


class BenchError(Exception):
    """A failure worth one line, not a traceback."""


# --------------------------------------------------------------------------- processes


class Processes:
    """Every long-running process the bench starts, each in its own process group."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own fixed command lines
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        while self._started:
            self.stop(self._started.pop())


_PORTS: list[int] = []


def free_port() -> int:
    """A free loopback port: any, or one of `BENCH_PORTS` (`low-high`) when it is set, for a
    machine where each user keeps to a range."""
    if not _PORTS and (spec := os.environ.get("BENCH_PORTS")):
        low, _, high = spec.partition("-")
        _PORTS.extend(range(int(low), int(high or low) + 1))
    while _PORTS:
        candidate = _PORTS.pop(0)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    if os.environ.get("BENCH_PORTS"):
        raise BenchError("no free port left in BENCH_PORTS")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{url}: the server exited ({proc.returncode}):\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise BenchError(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def wait_for_redis(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"redis-server exited ({proc.returncode}):\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.1)
    raise BenchError(f"redis-server did not answer within {timeout:.0f} s:\n{tail(log)}")


def post_json(url: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - loopback
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise BenchError(f"POST {url}: {exc.code} {exc.read()[:500]!r}") from exc


def warm_posts(base: str, token: str, first_id: int, count: int) -> None:
    """GET every post once, so that the response cache holds all of them."""
    from concurrent.futures import ThreadPoolExecutor

    def get(post_id: int) -> int:
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{base}/api/posts/{post_id}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            status: int = response.status
            return status

    with ThreadPoolExecutor(8) as pool:
        bad = [s for s in pool.map(get, range(first_id, first_id + count)) if s != 200]
    if bad:
        raise BenchError(f"warming the cache: {len(bad)} reads did not answer 200")


# --------------------------------------------------------------------------- database


def database_url(admin_url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Seeded:
    passwords: list[str]
    usernames: list[str]
    first_post_id: int
    posts: int
    argon2: str


async def seed(url: str, settings_overrides: dict[str, str], posts: int) -> Seeded:
    """Users with real Argon2id hashes (the app's own Passwords), posts with tags and likes."""
    import asyncpg

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from app.config import Settings
    from app.core.security import Passwords
    from app.core.slugs import slug_base

    # The API's own environment, so the hashes carry the parameters the API will use.
    overrides: dict[str, Any] = {k.lower(): v for k, v in settings_overrides.items()}
    hasher = Passwords(Settings(**overrides))
    rng = random.Random(20261122)
    now = datetime.now(UTC)
    usernames = [f"bench{i}" for i in range(USERS)]
    passwords = [f"bench-password-{i}-{secrets.token_hex(4)}" for i in range(USERS)]
    conn = await asyncpg.connect(url, timeout=10)
    try:
        async with conn.transaction():
            user_ids = []
            for name, password in zip(usernames, passwords, strict=True):
                user_ids.append(
                    await conn.fetchval(
                        'INSERT INTO "user" (email, username, password_hash, full_name, bio, '
                        "role, is_active, is_verified, created_at, updated_at) "
                        "VALUES ($1, $2, $3, '', '', 'user', true, true, $4, $4) RETURNING id",
                        f"{name}@example.com",
                        name,
                        await hasher.hash(password),
                        now,
                    )
                )
            tag_ids = [
                await conn.fetchval(
                    "INSERT INTO tag (name) VALUES ($1) RETURNING id", f"tag{i:02d}"
                )
                for i in range(TAGS)
            ]
            words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing"]
            rows = []
            for n in range(posts):
                created = now - timedelta(minutes=posts - n)
                content = " ".join(rng.choice(words) for _ in range(120))
                title = f"Post {n}: {rng.choice(words)}"
                slug = f"{slug_base(title)}-{n}"  # unique: the numbers differ
                rows.append((user_ids[n % USERS], title, slug, content, created))
            await conn.executemany(
                "INSERT INTO post (author_id, title, slug, content, published, likes, "
                "comments_count, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, true, 0, 0, $5, $5)",
                rows,
            )
            post_ids = [r["id"] for r in await conn.fetch("SELECT id FROM post ORDER BY id")]
            if post_ids != list(range(post_ids[0], post_ids[0] + posts)):
                raise BenchError("post ids are not contiguous in the fresh database")
            await conn.copy_records_to_table(
                "post_tag",
                records=[
                    (pid, tid) for pid in post_ids for tid in rng.sample(tag_ids, rng.randint(1, 4))
                ],
                columns=["post_id", "tag_id"],
            )
            likes = [(pid, uid, now) for pid in post_ids for uid in user_ids if rng.random() < 0.3]
            await conn.copy_records_to_table(
                "post_like", records=likes, columns=["post_id", "user_id", "created_at"]
            )
            await conn.execute(
                "UPDATE post SET likes = c.n FROM (SELECT post_id, count(*) AS n FROM post_like "
                "GROUP BY post_id) AS c WHERE c.post_id = post.id"
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return Seeded(passwords, usernames, post_ids[0], posts, hasher.parameters)


class ConnectionSampler:
    """Samples pg_stat_activity for the bench database while a login burst runs."""

    def __init__(self, url: str, database: str) -> None:
        self._url = url
        self._database = database
        self._stop = threading.Event()
        self.max_idle_in_transaction = 0
        self.max_connections = 0
        self.samples = 0
        # The last statement of each connection seen idle in a transaction: a SELECT on "user"
        # would be a login holding its connection across the password hash.
        self.idle_in_transaction_after: dict[str, int] = {}
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._url, timeout=10)
        try:
            while not self._stop.is_set():
                row = await conn.fetchrow(
                    "SELECT count(*) FILTER (WHERE state = 'idle in transaction') AS idle_tx, "
                    "count(*) AS total FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self._database,
                )
                self.max_idle_in_transaction = max(self.max_idle_in_transaction, row["idle_tx"])
                self.max_connections = max(self.max_connections, row["total"])
                self.samples += 1
                for (query,) in await conn.fetch(
                    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 60) "
                    "FROM pg_stat_activity WHERE datname = $1 AND state = 'idle in transaction'",
                    self._database,
                ):
                    seen = self.idle_in_transaction_after
                    seen[query] = seen.get(query, 0) + 1
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


# --------------------------------------------------------------------------- wrk

LUA_AUTH = """\
wrk.headers["Authorization"] = "Bearer {token}"
"""

LUA_READ_BY_ID = """\
wrk.headers["Authorization"] = "Bearer {token}"
local first_id, count = {first_id}, {count}
local counter = 0
local threads = 0

function setup(thread)
  thread:set("thread_index", threads)
  threads = threads + 1
end

function init(args)
  counter = (thread_index or 0) * 7919  -- threads walk the ids from different places
end

function request()
  counter = counter + 1
  return wrk.format(nil, "/api/posts/" .. (first_id + counter % count))
end
"""

LUA_LOGIN = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass
class Measurement:
    scenario: str
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def parse_wrk(scenario: str, connections: int, output: str) -> Measurement:
    rps, total = _RPS.search(output), _TOTAL.search(output)
    latencies = {m[1]: float(m[2]) * _UNITS_MS[m[3]] for m in _LATENCY.finditer(output)}
    if not (rps and total and "50" in latencies and "99" in latencies):
        raise BenchError(f"{scenario}: cannot read wrk's output:\n{output}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx": 0}
    if socket_errors := _SOCKET.search(output):
        for key, value in zip(
            ("connect", "read", "write", "timeout"), socket_errors.groups(), strict=True
        ):
            errors[key] = int(value)
    if non_2xx := _NON_2XX.search(output):
        errors["non_2xx"] = int(non_2xx[1])
    return Measurement(
        scenario=scenario,
        connections=connections,
        seconds=float(total[2]) * _UNITS_MS[total[3]] / 1000,
        requests=int(total[1]),
        rps=float(rps[1]),
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        errors=errors,
    )


@dataclass
class Wrk:
    threads: int
    timeout_s: float
    scripts: Path

    def command(self, url: str, connections: int, seconds: float, script: str) -> list[str]:
        path = self.scripts / f"{abs(hash(script))}.lua"
        path.write_text(script)
        return [
            "wrk",
            f"--threads={min(self.threads, connections)}",
            f"--connections={connections}",
            f"--duration={max(1, round(seconds))}s",
            f"--timeout={max(1, round(self.timeout_s))}s",
            "--latency",
            f"--script={path}",
            url,
        ]

    def run(
        self, scenario: str, url: str, connections: int, seconds: float, script: str = ""
    ) -> Measurement:
        args = self.command(url, connections, seconds, script)
        try:
            done = subprocess.run(  # noqa: S603
                args, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{scenario}: wrk did not finish in time") from exc
        if done.returncode != 0:
            raise BenchError(f"{scenario}: wrk failed ({done.returncode}):\n{done.stderr}")
        return parse_wrk(scenario, connections, done.stdout)

    def start(
        self, url: str, connections: int, seconds: float, script: str, log: IO[str]
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(  # noqa: S603
            self.command(url, connections, seconds, script),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    measurement: Measurement
    kind: str  # read, list or login
    cache: str  # cached, uncached or -
    min_ratio: float | None = None  # the target, as a ratio to hello-world
    no_errors: bool = False  # the target: every request answered 2xx in time
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    # For the load rows: the rate as a share of the same scenario at the base concurrency.
    share_of: Measurement | None = None
    share: float | None = None


@dataclass
class Report:
    started_at: str
    environment: dict[str, Any]
    hello: list[Measurement] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    login: dict[str, Any] = field(default_factory=dict)

    @property
    def hello_rps(self) -> float:
        return sum(m.rps for m in self.hello) / len(self.hello)

    def judge(self) -> None:
        for row in self.rows:
            m = row.measurement
            if row.kind in ("read", "list", "health"):
                row.ratio = m.rps / self.hello_rps
            if row.share_of is not None and row.kind == "reference":
                row.share = m.rps / row.share_of.rps
                row.target = "(the stack's own)"
            elif row.share_of is not None:
                row.share = m.rps / row.share_of.rps
                row.target = f">= {LOAD_SHARE_TARGET:.0%} of {row.share_of.connections}, 0 errors"
                row.met = row.share >= LOAD_SHARE_TARGET and m.error_count == 0
            elif row.min_ratio is not None and row.ratio is not None:
                row.target = f">= {row.min_ratio:.0%}"
                row.met = row.ratio >= row.min_ratio and m.error_count == 0
            elif row.no_errors:
                row.target = "0 errors"
                row.met = m.error_count == 0

    def table(self) -> str:
        header = (
            "scenario",
            "conns",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "vs hello",
            "target",
            "result",
        )
        lines: list[tuple[str, ...]] = [header]
        for n, m in enumerate(self.hello, 1):
            lines.append(_cells(f"hello-world (run {n})", m, "100%", "reference", ""))
        mean = f"{self.hello_rps:,.0f}"
        lines.append(("hello-world (mean)", "", mean, "", "", "", "", "", ""))
        for row in self.rows:
            ratio = f"{row.ratio:.1%}" if row.ratio is not None else ""
            result = "" if row.met is None else ("met" if row.met else "SHORT")
            lines.append(
                _cells(row.measurement.scenario, row.measurement, ratio, row.target, result)
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = []
        for i, line in enumerate(lines):
            out.append(
                "  ".join(
                    cell.ljust(w) if col == 0 else cell.rjust(w)
                    for col, (cell, w) in enumerate(zip(line, widths, strict=True))
                )
            )
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)

    def ratios(self) -> str:
        """The issue's table: each read as a share of hello-world (or, for the load rows, of
        its own rate at the base concurrency), with the target."""
        lines = [("read", "ratio", "target", "result")]
        for row in self.rows:
            if row.share is not None:
                value = f"{row.share:.3f} of {row.share_of.connections if row.share_of else ''}"
            elif row.min_ratio is not None and row.ratio is not None:
                value = f"{row.ratio:.3f}"
            else:
                continue
            result = "" if row.met is None else ("met" if row.met else "SHORT")
            lines.append((row.measurement.scenario, value, row.target, result))
        widths = [max(len(line[i]) for line in lines) for i in range(4)]
        out = []
        for i, line in enumerate(lines):
            out.append(
                "  ".join(
                    cell.ljust(w) if col == 0 else cell.rjust(w)
                    for col, (cell, w) in enumerate(zip(line, widths, strict=True))
                )
            )
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)

    def as_json(self) -> dict[str, Any]:
        def measurement(m: Measurement) -> dict[str, Any]:
            return {**asdict(m), "error_count": m.error_count}

        return {
            "started_at": self.started_at,
            "environment": self.environment,
            "hello_world": [measurement(m) for m in self.hello],
            "hello_world_mean_rps": self.hello_rps,
            "scenarios": [
                {
                    **measurement(r.measurement),
                    "kind": r.kind,
                    "cache": r.cache,
                    "ratio_to_hello": r.ratio,
                    "share_of_base_connections": r.share,
                    "target": r.target,
                    "met": r.met,
                }
                for r in self.rows
            ],
            "login": self.login,
        }


def _cells(name: str, m: Measurement, ratio: str, target: str, result: str) -> tuple[str, ...]:
    errors = ", ".join(f"{k} {v}" for k, v in m.errors.items() if v) or "0"
    return (
        name,
        str(m.connections),
        f"{m.rps:,.0f}",
        f"{m.p50_ms:.2f}",
        f"{m.p99_ms:.2f}",
        errors,
        ratio,
        target,
        result,
    )


# --------------------------------------------------------------------------- the run


@dataclass
class Options:
    seconds: float
    warmup: float
    connections: int
    high_connections: int
    threads: int
    login_connections: int
    login_seconds: float
    posts: int
    timeout: float
    admin_url: str
    redis_server: str
    output: Path
    top_connections: int = 1024
    walk: int = 100
    near_off: bool = False
    database_prefix: str = "inkwell_bench_"
    baseline: Path | None = None


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="wrk against one Inkwell API worker, beside a FastAPI hello-world.",
    )
    parser.add_argument("--quick", action="store_true", help="3 s per measurement")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--high-connections", type=int, default=256, help="the overload pass")
    parser.add_argument(
        "--top-connections", type=int, default=1024, help="the cached read's last pass"
    )
    parser.add_argument("--walk", type=int, default=100, help="post ids the reads walk")
    parser.add_argument(
        "--near-off", action="store_true", help="also the cached read with NEAR_CACHE_ENABLED=false"
    )
    parser.add_argument(
        "--database-prefix",
        default=os.environ.get("BENCH_DATABASE_PREFIX", "inkwell_bench_"),
        help="the scratch database's name is this plus random hex",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (same migrations) whose API also runs the uncached passes, "
        "before this one's, against the same database: a before/after in one run",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--login-connections", type=int, default=8)
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=10.0, help="wrk's per-request timeout")
    add_service_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else args.duration
    return Options(
        seconds=seconds,
        warmup=min(3.0, seconds),
        connections=args.connections,
        high_connections=args.high_connections,
        top_connections=args.top_connections,
        walk=args.walk,
        near_off=args.near_off,
        database_prefix=args.database_prefix,
        baseline=args.baseline.resolve() if args.baseline else None,
        threads=args.threads,
        login_connections=args.login_connections,
        login_seconds=min(5.0, seconds),
        posts=args.posts,
        timeout=args.timeout,
        admin_url=args.admin_url,
        redis_server=args.redis_server,
        output=args.output,
    )


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Bench:
    options: Options
    workdir: Path
    processes: Processes = field(default_factory=Processes)
    database: str = ""
    database_created: bool = False
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    def __post_init__(self) -> None:
        if not self.database:
            self.database = f"{self.options.database_prefix}{secrets.token_hex(4)}"

    @property
    def db_url(self) -> str:
        return database_url(self.options.admin_url, self.database)

    def api_env(self, redis_port: int, cache: bool, near: bool = True) -> dict[str, str]:
        return {
            "NEAR_CACHE_ENABLED": "true" if near else "false",
            "DATABASE_URL": self.db_url,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DATA_DIR": str(self.workdir / "data"),
            "JWT_SECRET_KEY": self.jwt_secret,
            "RATE_LIMITS_ENABLED": "false",
            "CACHE_ENABLED": "true" if cache else "false",
            "WEB_CONCURRENCY": "1",
            "ACCESS_TOKEN_EXPIRE_MINUTES": "120",
            "PYTHONUNBUFFERED": "1",
        }

    def start_api(
        self, redis_port: int, cache: bool, near: bool = True, root: Path = ROOT
    ) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        name = f"api-cache-{'on' if cache else 'off'}{'' if near else '-far'}"
        log = self.workdir / f"{name}{'' if root == ROOT else '-baseline'}.log"
        env = {**os.environ, **self.api_env(redis_port, cache, near), "PYTHONPATH": str(root)}
        args = [PYTHON, "-m", "app", "run", "--port", str(port), "--workers", "1"]
        proc = self.processes.start(args, log, env, cwd=root)
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health", proc, log, 60)
        wait_for_http(f"{base}/health/ready", proc, log, 30)
        say(f"  API (cache {'on' if cache else 'off'}) pid {proc.pid} on {base}, log {log}")
        return proc, base

    def prepare(self) -> tuple[int, Seeded]:
        """The scratch database (created, migrated, seeded) and a private redis-server.

        Returns the redis-server's port and the seeded data; `processes` stops the server and
        the caller drops the database (`database_created` says whether there is one).
        """
        o = self.options
        (self.workdir / "data").mkdir(exist_ok=True)

        say(f"creating database {self.database}")
        asyncio.run(create_database(o.admin_url, self.database))
        self.database_created = True
        migrate_env = {**os.environ, "DATABASE_URL": self.db_url}
        migrated = subprocess.run(  # noqa: S603
            [PYTHON, "-m", "app", "migrate"],
            cwd=ROOT,
            env=migrate_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if migrated.returncode != 0:
            raise BenchError(f"migration failed:\n{migrated.stdout}\n{migrated.stderr}")

        redis_port = free_port()
        redis_log = self.workdir / "redis.log"
        redis = self.processes.start(
            [
                o.redis_server,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            redis_log,
        )
        wait_for_redis(redis_port, redis, redis_log, 10)

        say(f"seeding {o.posts} posts, {USERS} users (Argon2id hashes)")
        seeded = asyncio.run(seed(self.db_url, self.api_env(redis_port, True), o.posts))
        return redis_port, seeded

    def run(self, report: Report) -> None:
        o = self.options
        wrk = Wrk(o.threads, o.timeout, self.workdir)
        redis_port, seeded = self.prepare()
        report.login["argon2"] = seeded.argon2

        hello_port = free_port()
        hello_log = self.workdir / "hello.log"
        hello = self.processes.start(
            [PYTHON, str(ROOT / "bench" / "hello.py"), "--port", str(hello_port)], hello_log
        )
        hello_url = f"http://127.0.0.1:{hello_port}/"
        wait_for_http(hello_url, hello, hello_log, 30)

        def measure_hello() -> None:
            wrk.run("warm-up", hello_url, o.connections, 1)
            say("  hello-world")
            report.hello.append(wrk.run("hello-world", hello_url, o.connections, o.seconds))

        measure_hello()
        self.run_api(report, wrk, seeded, redis_port, True)
        if o.baseline is not None:
            self.run_api(report, wrk, seeded, redis_port, False, root=o.baseline)
        self.run_api(report, wrk, seeded, redis_port, False)
        if o.near_off:
            self.run_far(report, wrk, seeded, redis_port)
        measure_hello()
        # The bare stack under the same load: what the load rows' shares compare with.
        for conns in (o.high_connections, o.top_connections):
            say(f"  hello-world at {conns} connections")
            m = wrk.run(f"hello-world at {conns}", hello_url, conns, o.seconds)
            report.rows.append(Row(m, "reference", "-", share_of=report.hello[-1]))

    def run_far(self, report: Report, wrk: Wrk, seeded: Seeded, redis_port: int) -> None:
        """The cached read with the near cache off: a Redis round trip per hit."""
        o = self.options
        say("API with the response cache on, the near cache off")
        api, base = self.start_api(redis_port, True, near=False)
        try:
            token = post_json(
                f"{base}/api/token",
                {"username": seeded.usernames[READER], "password": seeded.passwords[READER]},
            )["access_token"]
            walk = min(o.walk, seeded.posts)
            script = LUA_READ_BY_ID.format(token=token, first_id=seeded.first_post_id, count=walk)
            url = f"{base}/api/posts/{seeded.first_post_id}"
            warm_posts(base, token, seeded.first_post_id, walk)
            wrk.run("warm-up", url, o.connections, o.warmup, script)
            name = "read cached, near cache off"
            say(f"  {name} at {o.connections} connections")
            report.rows.append(
                Row(wrk.run(name, url, o.connections, o.seconds, script), "read", "far")
            )
        finally:
            self.processes.stop(api)

    def run_api(
        self,
        report: Report,
        wrk: Wrk,
        seeded: Seeded,
        redis_port: int,
        cache: bool,
        root: Path = ROOT,
    ) -> None:
        o = self.options
        label = "cached" if cache else "uncached"
        suffix = "" if root == ROOT else f" [baseline {root.name}]"
        say(f"API with the response cache {'on' if cache else 'off'}{suffix}")
        api, base = self.start_api(redis_port, cache, root=root)
        try:
            token = post_json(
                f"{base}/api/token",
                {"username": seeded.usernames[READER], "password": seeded.passwords[READER]},
            )["access_token"]
            walk = min(o.walk, seeded.posts)
            read_script = LUA_READ_BY_ID.format(
                token=token, first_id=seeded.first_post_id, count=walk
            )
            list_script = LUA_AUTH.format(token=token)
            read_url, list_url = (
                f"{base}/api/posts/{seeded.first_post_id}",
                f"{base}/api/posts?limit=20",
            )

            # Warm the pool and the caches; with the cache on, every post's entry, so that the
            # cached reads (which walk all the ids) measure hits only.
            if cache:
                say(f"  warming the cache: {walk} posts")
                warm_posts(base, token, seeded.first_post_id, walk)
            wrk.run("warm-up", read_url, o.connections, o.warmup, read_script)
            wrk.run("warm-up", list_url, o.connections, o.warmup, list_script)

            base_rates: dict[str, Measurement] = {}
            passes = [o.connections, o.high_connections]
            if cache:
                passes.append(o.top_connections)
            for conns in passes:
                for kind, url, script in (
                    ("read", read_url, read_script),
                    ("list", list_url, list_script),
                ):
                    if conns == o.top_connections and kind == "list":
                        continue
                    name = (
                        f"{kind} {label}"
                        + (" GET /api/posts/{id}" if kind == "read" else " GET /api/posts?limit=20")
                        + suffix
                    )
                    say(f"  {name} at {conns} connections")
                    m = wrk.run(name, url, conns, o.seconds, script)
                    base_pass = conns == o.connections
                    goal = TARGETS.get((kind, label)) if base_pass else None
                    row = Row(m, kind, label, goal, no_errors=not base_pass)
                    if base_pass:
                        base_rates[kind] = m
                    elif cache and kind == "read":
                        row.share_of = base_rates[kind]
                    report.rows.append(row)
            if cache:
                say(f"  GET /health at {o.connections} connections")
                health_url = f"{base}/health"
                wrk.run("warm-up", health_url, o.connections, o.warmup)
                health = wrk.run("GET /health", health_url, o.connections, o.seconds)
                report.rows.append(Row(health, "health", "-", TARGETS[("health", "-")]))

            if cache:
                self.login_burst(report, wrk, seeded, base, read_url, read_script)
        finally:
            self.processes.stop(api)

    def login_burst(
        self,
        report: Report,
        wrk: Wrk,
        seeded: Seeded,
        base: str,
        read_url: str,
        read_script: str,
    ) -> None:
        o = self.options
        body = json.dumps(
            {"username": seeded.usernames[LOGGER_USER], "password": seeded.passwords[LOGGER_USER]}
        )
        login_script = LUA_LOGIN.format(body=body)
        login_url = f"{base}/api/token"

        say(f"  logins alone at {o.login_connections} connections")
        alone = wrk.run(
            "login POST /api/token", login_url, o.login_connections, o.login_seconds, login_script
        )
        report.rows.append(Row(alone, "login", "-"))

        say("  read cached, idle")
        idle = wrk.run("read cached, idle", read_url, o.connections, o.seconds, read_script)
        report.rows.append(Row(idle, "read", "cached"))

        say(f"  read cached during a login burst ({o.login_connections} connections)")
        burst_log_path = self.workdir / "login-burst.txt"
        with (
            burst_log_path.open("w") as burst_log,
            ConnectionSampler(self.db_url, self.database) as pg,
        ):
            logins = wrk.start(
                login_url, o.login_connections, o.seconds + 2, login_script, burst_log
            )
            try:
                time.sleep(1)
                during = wrk.run(
                    "read cached, login burst", read_url, o.connections, o.seconds, read_script
                )
                logins.wait(o.seconds + 60)
            finally:
                if logins.poll() is None:
                    logins.kill()
                    logins.wait()
        report.rows.append(Row(during, "read", "cached"))
        burst = parse_wrk("login during the burst", o.login_connections, burst_log_path.read_text())
        ratio = during.p99_ms / idle.p99_ms
        report.login.update(
            {
                "connections": o.login_connections,
                "logins_per_s_alone": alone.rps,
                "login_p50_ms_alone": alone.p50_ms,
                "login_p99_ms_alone": alone.p99_ms,
                "login_errors_alone": alone.errors,
                "logins_per_s_during_burst": burst.rps,
                "login_errors_during_burst": burst.errors,
                "read_p99_ms_idle": idle.p99_ms,
                "read_p99_ms_during_burst": during.p99_ms,
                "read_rps_idle": idle.rps,
                "read_rps_during_burst": during.rps,
                "p99_ratio": ratio,
                "p99_ratio_target": BURST_P99_TARGET,
                "met": ratio <= BURST_P99_TARGET and during.error_count == 0,
                "pg_max_idle_in_transaction": pg.max_idle_in_transaction,
                "pg_max_connections": pg.max_connections,
                "pg_samples": pg.samples,
                "pg_idle_in_transaction_after": pg.idle_in_transaction_after,
            }
        )


def environment(options: Options) -> dict[str, Any]:
    version = subprocess.run(
        ["wrk", "-v"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "python": sys.version.split()[0],
        "python_executable": PYTHON,
        "python_config_args": _python_config_args(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "wrk": (version.stdout or version.stderr).splitlines()[0] if version else "",
        "seconds_per_measurement": options.seconds,
        "wrk_threads": options.threads,
        "connections": options.connections,
        "high_connections": options.high_connections,
        "top_connections": options.top_connections,
        "walk": options.walk,
        "posts": options.posts,
    }


def _python_config_args() -> str:
    import sysconfig

    return str(sysconfig.get_config_var("CONFIG_ARGS") or "")


def print_report(report: Report, options: Options) -> None:
    login = report.login
    print()
    print(
        f"Inkwell benchmark, {report.started_at}: one API worker, wrk {options.threads} threads, "
        f"{options.seconds:.0f} s per measurement, Python {report.environment['python']} "
        f"({PYTHON})"
    )
    print()
    print(report.table())
    print()
    print("Ratios (to hello-world; the load rows to the same read at the base connections):")
    print(report.ratios())
    print()
    print(f"Logins ({login.get('argon2', '?')}), {login.get('connections')} connections:")
    if "logins_per_s_alone" in login:
        print(
            f"  alone:        {login['logins_per_s_alone']:.1f} logins/s "
            f"(p50 {login['login_p50_ms_alone']:.0f} ms, p99 {login['login_p99_ms_alone']:.0f} ms)"
        )
        print(f"  during reads: {login['logins_per_s_during_burst']:.1f} logins/s")
        print(
            f"  read p99 idle {login['read_p99_ms_idle']:.2f} ms, during the login burst "
            f"{login['read_p99_ms_during_burst']:.2f} ms: {login['p99_ratio']:.2f}x "
            f"(target <= {BURST_P99_TARGET:.0f}x) {'met' if login['met'] else 'SHORT'}"
        )
        print(
            f"  database during the burst: at most {login['pg_max_connections']} connections, "
            f"{login['pg_max_idle_in_transaction']} idle in transaction "
            f"({login['pg_samples']} samples)"
        )
        for query, n in sorted(
            login["pg_idle_in_transaction_after"].items(), key=lambda item: -item[1]
        )[:5]:
            print(f"    idle in transaction after {query!r}: {n} samples")
    print()
    print(f"JSON: {options.output}")


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the benchmarks find PostgreSQL (to create their database) and redis-server."""
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL URL allowed to CREATE DATABASE (env BENCH_ADMIN_DATABASE_URL)",
    )
    parser.add_argument(
        "--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server"
    )


def run_and_clean_up(bench: Bench, body: Callable[[], None]) -> int | None:
    """Runs `body`; whatever happens, stops every process the bench started and drops its
    database. None on success, else the exit status (1 on a bench error, 130 on Ctrl-C)."""
    try:
        body()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.processes.stop_all()
        if bench.database_created:
            with contextlib.suppress(Exception):
                asyncio.run(drop_database(bench.options.admin_url, bench.database))
    return None


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    if not Path(options.redis_server).exists():
        print(f"redis-server not found at {options.redis_server} (--redis-server)", file=sys.stderr)
        return 2

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    report = Report(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        environment=environment(options),
    )
    with tempfile.TemporaryDirectory(prefix="inkwell-bench-") as tmp:
        bench = Bench(options, Path(tmp))
        failed = run_and_clean_up(bench, lambda: bench.run(report))
        if failed is not None:
            return failed
    report.judge()
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    print_report(report, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
