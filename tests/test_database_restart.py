"""PostgreSQL restarts under the API (`pg_ctl restart -m fast` on a private cluster, services
mode): no request answers 500; one the database could not serve answers 503
`database_unavailable` with `Retry-After`; a read whose pooled connection died runs once more on
a fresh one; a write is never run twice. In both modes: the same rules with the failure
simulated, and the OpenAPI document declaring the 503."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command
from fastapi import FastAPI
from sqlalchemy import event, exc
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_only

from app.config import Settings
from app.services import posts
from tests import postgres_server
from tests.conftest import ON_CI, SERVICES, alembic_config, make_settings, running_app
from tests.factories import Account, create_post, register
from tests.postgres_server import PostgresServer
from tests.problems import assert_problem

DATABASE = "inkwell"
LOAD_CLIENTS = 12
LOAD_BEFORE_S = 1.0
LOAD_AFTER_S = 1.5


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if not SERVICES:
        pytest.skip("restarts a PostgreSQL cluster of its own: services mode")
    reason = postgres_server.available()
    if reason is not None:
        if ON_CI:
            pytest.fail(f"{reason} (CI=true: the database restart tests may not be skipped)")
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
async def cluster_settings(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The API on the private cluster, migrated. Memory stores (the run's Redis caches another
    database), no cache (every read reaches the database) and no rate limits."""
    admin = await asyncpg.connect(postgres.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    settings = make_settings(
        postgres.url(DATABASE),
        tmp_path_factory.mktemp("restart"),
        cache_enabled=False,
        rate_limits_enabled=False,
        db_pool_size=5,
        db_max_overflow=5,
    )
    await asyncio.to_thread(command.upgrade, alembic_config(settings), "head")
    return settings


@pytest.fixture
async def api(cluster_settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    # A 500 comes back as an answer (as from a real server), not as an exception in the test.
    async with running_app(cluster_settings, raise_app_exceptions=False) as running:
        yield running


def assert_unavailable(response: httpx.Response) -> None:
    assert_problem(response, 503, "database_unavailable")
    assert int(response.headers["retry-after"]) >= 1


async def test_after_an_idle_restart_the_first_write_and_the_first_read_succeed(
    api: tuple[FastAPI, httpx.AsyncClient], postgres: PostgresServer
) -> None:
    _, client = api
    author = await register(client)
    post = await create_post(client, author)
    await _fill_the_pool(client, post)
    await asyncio.to_thread(postgres.restart)

    # Every pooled connection is dead: the first one checked out is replaced, and the pool
    # with it, before the write uses it (a write that failed could not be run again).
    response = await client.post("/api/posts", json=_post_body(1), headers=author.headers)
    assert response.status_code == 201, response.text

    await _fill_the_pool(client, post)
    await asyncio.to_thread(postgres.restart)
    response = await client.get(f"/api/posts/{post['id']}", headers=author.headers)
    assert response.status_code == 200, response.text
    assert (await client.get("/api/tags")).status_code == 200


async def _fill_the_pool(client: httpx.AsyncClient, post: dict[str, Any]) -> None:
    """Several connections in the pool, idle, for the restart to end."""
    paths = ["/api/posts", f"/api/posts/{post['id']}", "/api/tags"] * 2
    responses = await asyncio.gather(*(client.get(path) for path in paths))
    assert [r.status_code for r in responses] == [200] * len(paths)


async def test_a_read_whose_connection_dies_in_use_runs_once_more_a_write_answers_503(
    api: tuple[FastAPI, httpx.AsyncClient], postgres: PostgresServer
) -> None:
    app, client = api
    author = await register(client)
    post = await create_post(client, author)
    killer = await BackendKiller.attach(app, postgres)
    try:
        killer.arm()
        response = await client.get(f"/api/posts/{post['id']}")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == post["id"]
        assert killer.killed == 1  # the first attempt lost its connection; the second did not

        killer.arm()
        response = await client.get("/api/users/me", headers=author.headers)
        assert response.status_code == 200, response.text
        assert killer.killed == 2

        killer.arm()
        response = await client.post("/api/posts", json=_post_body(2), headers=author.headers)
        assert_unavailable(response)
        assert killer.killed == 3
    finally:
        await killer.detach()
    # Not run twice: here the connection died before the INSERT, so nothing was saved.
    listed = (await client.get("/api/posts", params={"author": author.username})).json()
    assert [item["id"] for item in listed["items"]] == [post["id"]]


async def test_requests_during_a_restart_answer_503_never_500(
    api: tuple[FastAPI, httpx.AsyncClient], postgres: PostgresServer
) -> None:
    _, client = api
    authors = [await register(client) for _ in range(3)]
    posts = [await create_post(client, author) for author in authors]
    outcomes: Counter[tuple[str, int]] = Counter()
    unexpected: list[str] = []
    created: list[int] = []
    stop = asyncio.Event()
    counter = itertools.count()

    async def load(worker: int) -> None:
        rng = random.Random(worker)
        author = authors[worker % len(authors)]
        while not stop.is_set():
            kind, response = await _one_request(client, rng, author, posts, next(counter))
            outcomes[(kind, response.status_code)] += 1
            if response.status_code == 503:
                try:
                    assert_unavailable(response)
                except (AssertionError, KeyError, ValueError) as exc:
                    unexpected.append(f"{kind}: {exc!r}")
            elif response.status_code >= 300:
                unexpected.append(f"{kind} {response.status_code}: {response.text[:300]}")
            elif kind == "create":
                created.append(response.json()["id"])

    workers = [asyncio.create_task(load(n)) for n in range(LOAD_CLIENTS)]
    try:
        await asyncio.sleep(LOAD_BEFORE_S)
        before = sum(outcomes.values())
        await asyncio.to_thread(postgres.restart)
        during = sum(outcomes.values()) - before
        await asyncio.sleep(LOAD_AFTER_S)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    summary = dict(sorted(outcomes.items()))
    assert not unexpected, (unexpected[:10], summary)
    assert before > 0, summary
    assert during > 0, summary  # requests were answered while the server went down and up
    assert sum(outcomes.values()) > before + during + LOAD_CLIENTS, summary
    # Every acknowledged post is there.
    assert created, summary
    for post_id in created:
        assert (await client.get(f"/api/posts/{post_id}")).status_code == 200
    # And the API serves again, reads and writes alike.
    assert (await client.get("/api/posts")).status_code == 200
    response = await client.post("/api/posts", json=_post_body(3), headers=authors[0].headers)
    assert response.status_code == 201, response.text
    ready = await client.get("/health/ready")
    assert ready.status_code == 200, ready.text


async def test_readiness_names_the_database_while_it_is_down(
    api: tuple[FastAPI, httpx.AsyncClient], postgres: PostgresServer
) -> None:
    _, client = api
    author = await register(client)
    await asyncio.to_thread(postgres.stop)
    try:
        response = await client.get("/health/ready")
        body = assert_problem(response, 503, "dependency_unavailable")
        assert body["checks"]["database"] == "unavailable"
        assert "database" in body["detail"]
        assert int(response.headers["retry-after"]) >= 1
        for response in (
            await client.get("/api/posts"),
            await client.get("/api/tags"),
            await client.get("/api/users/me", headers=author.headers),
            await client.post("/api/posts", json=_post_body(4), headers=author.headers),
        ):
            assert_unavailable(response)
    finally:
        await asyncio.to_thread(postgres.start)
    assert (await client.get("/health/ready")).status_code == 200
    assert (await client.get("/api/posts")).status_code == 200


def _lost_connection() -> exc.InterfaceError:
    """What SQLAlchemy raises when a statement finds its pooled connection closed."""
    return exc.InterfaceError(
        "SELECT 1", {}, Exception("connection is closed"), connection_invalidated=True
    )


async def test_a_read_that_lost_its_connection_runs_once_more(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    popular_tags = posts.popular_tags

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise _lost_connection()
        return await popular_tags(*args, **kwargs)

    monkeypatch.setattr(posts, "popular_tags", flaky)
    response = await client.get("/api/tags")
    assert response.status_code == 200, response.text
    assert calls == 2


async def test_a_read_that_loses_its_connection_twice_answers_503(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def broken(*_: Any, **__: Any) -> Any:
        nonlocal calls
        calls += 1
        raise _lost_connection()

    monkeypatch.setattr(posts, "popular_tags", broken)
    assert_unavailable(await client.get("/api/tags"))
    assert calls == 2  # once more, not again and again


async def test_a_write_that_lost_its_connection_is_not_run_again(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    author = await register(client)
    calls = 0

    async def broken(*_: Any, **__: Any) -> Any:
        nonlocal calls
        calls += 1
        raise _lost_connection()

    monkeypatch.setattr(posts, "create", broken)
    response = await client.post("/api/posts", json=_post_body(5), headers=author.headers)
    assert_unavailable(response)
    assert calls == 1


async def test_a_database_error_that_is_no_outage_stays_a_500(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong statement is a bug to fix, not a moment to wait: no 503 hides it."""

    async def wrong(*_: Any, **__: Any) -> Any:
        raise exc.ProgrammingError("SELECT nonsense", {}, Exception("syntax error"))

    monkeypatch.setattr(posts, "popular_tags", wrong)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert_problem(await client.get("/api/tags"), 500, "internal_error")


def test_every_database_route_declares_503_with_retry_after(app: FastAPI) -> None:
    schema = app.openapi()
    operations = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        if path.startswith("/api/")
        for method, operation in item.items()
    ]
    assert operations
    for path, method, operation in operations:
        declared = operation["responses"].get("503")
        assert declared, f"{method.upper()} {path} does not declare 503"
        assert "Retry-After" in declared["headers"], f"{method.upper()} {path}"
        assert list(declared["content"]) == ["application/problem+json"]


def _post_body(n: int) -> dict[str, Any]:
    return {"title": f"Post {n}", "content": "Body", "tags": ["restart"], "published": True}


async def _one_request(
    client: httpx.AsyncClient,
    rng: random.Random,
    author: Account,
    posts: list[dict[str, Any]],
    n: int,
) -> tuple[str, httpx.Response]:
    post_id = rng.choice(posts)["id"]
    choice = rng.random()
    if choice < 0.2:
        return "create", await client.post("/api/posts", json=_post_body(n), headers=author.headers)
    if choice < 0.3:
        return "like", await client.put(f"/api/posts/{post_id}/like", headers=author.headers)
    if choice < 0.5:
        return "list", await client.get("/api/posts", params={"limit": 5})
    if choice < 0.6:
        return "tags", await client.get("/api/tags")
    if choice < 0.7:
        return "user", await client.get(f"/api/users/{author.id}")
    if choice < 0.8:
        return "me", await client.get("/api/users/me", headers=author.headers)
    return "read", await client.get(f"/api/posts/{post_id}", headers=author.headers)


class BackendKiller:
    """Once armed, ends the server session of the next connection the app checks out of its
    pool (`pg_terminate_backend`), and waits until the driver has seen it closed: the request
    then finds its connection dead on its first statement, as one does when PostgreSQL restarts
    between the checkout and the query."""

    def __init__(self, app: FastAPI, admin: asyncpg.Connection) -> None:
        self.pool = app.state.engine.sync_engine.pool
        self.admin = admin
        self.armed = False
        self.killed = 0

    @classmethod
    async def attach(cls, app: FastAPI, postgres: PostgresServer) -> BackendKiller:
        killer = cls(app, await asyncpg.connect(postgres.admin_dsn))
        event.listen(killer.pool, "checkout", killer._on_checkout)
        return killer

    async def detach(self) -> None:
        event.remove(self.pool, "checkout", self._on_checkout)
        await self.admin.close()

    def arm(self) -> None:
        self.armed = True

    def _on_checkout(self, _dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if not self.armed:
            return
        self.armed = False
        connection = record.driver_connection
        await_only(self._kill(connection))
        self.killed += 1

    async def _kill(self, connection: Any) -> None:
        await self.admin.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())
        deadline = time.monotonic() + 5
        while not connection.is_closed():
            assert time.monotonic() < deadline, "the driver never saw its connection closed"
            await asyncio.sleep(0.01)
