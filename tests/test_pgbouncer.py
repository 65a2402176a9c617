"""Behind PgBouncer in transaction mode (what "Scaling out" suggests once PostgreSQL runs out of
connections), with DB_PGBOUNCER=true: every request works under concurrency. Services mode."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app.config import Settings
from tests.conftest import ON_CI, SERVICES, running_app
from tests.factories import PASSWORD
from tests.redis_server import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
START_TIMEOUT_S = 15.0
CLIENTS = 40

pytestmark = [
    pytest.mark.skipif(not SERVICES, reason="PgBouncer sits in front of PostgreSQL"),
    pytest.mark.skipif(
        not Path(PGBOUNCER).exists() and not ON_CI,
        reason="pgbouncer is not installed (apt-get install pgbouncer)",
    ),
]

CONFIG = """\
[databases]
* = host={host} port={port} user={user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
auth_type = any
pool_mode = transaction
max_client_conn = 500
default_pool_size = 4
ignore_startup_parameters = extra_float_digits,jit
unix_socket_dir =
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""


@pytest.fixture(scope="module")
def pgbouncer_url(settings: Settings) -> Iterator[str]:
    """The run's database, through a PgBouncer of its own with 4 server connections."""
    database = make_url(str(settings.database_url))
    directory = Path(tempfile.mkdtemp(prefix="inkwell-pgbouncer-"))
    port = free_port()
    (directory / "pgbouncer.ini").write_text(
        CONFIG.format(
            host=database.host,
            port=database.port or 5432,
            user=database.username,
            listen=port,
            directory=directory,
        )
    )
    command = [PGBOUNCER, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(directory, "postgres")
        shutil.chown(directory / "pgbouncer.ini", "postgres")
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stderr=subprocess.STDOUT, stdout=subprocess.PIPE)  # noqa: S603
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "listening on" not in _log(directory):
            assert process.poll() is None, _log(directory) or process.stdout
            assert time.monotonic() < deadline, _log(directory)
            time.sleep(0.05)
        yield str(database.set(host="127.0.0.1", port=port))
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def _log(directory: Path) -> str:
    log = directory / "pgbouncer.log"
    return log.read_text(errors="replace") if log.exists() else ""


async def test_the_api_works_behind_pgbouncer_in_transaction_mode(
    app: FastAPI, settings: Settings, pgbouncer_url: str
) -> None:
    # `app` brings the suite's clean-up: the tables are emptied after this test too.
    behind = settings.model_copy(
        update={"database_url": pgbouncer_url, "db_pgbouncer": True, "rate_limits_enabled": False}
    )

    async def a_user_session(client: httpx.AsyncClient, n: int) -> list[int]:
        """Register, write, list, like, read: the statuses that were not as expected."""
        body = {"email": f"bouncer{n}@example.com", "username": f"bouncer{n}", "password": PASSWORD}
        registered = await client.post("/api/users", json=body)
        if registered.status_code != 201:
            return [registered.status_code]
        headers = {"Authorization": f"Bearer {registered.json()['tokens']['access_token']}"}
        post = await client.post(
            "/api/posts",
            json={"title": f"Post {n}", "content": "x", "tags": ["pooled"]},
            headers=headers,
        )
        if post.status_code != 201:
            return [post.status_code]
        post_id = post.json()["id"]
        unexpected = []
        for _ in range(3):
            listed = await client.get("/api/posts", params={"tag": "pooled"}, headers=headers)
            liked = await client.put(f"/api/posts/{post_id}/like", headers=headers)
            read = await client.get(f"/api/posts/{post_id}", headers=headers)
            unexpected += [
                status
                for status, expected in (
                    (listed.status_code, 200),
                    (liked.status_code, 204),
                    (read.status_code, 200),
                )
                if status != expected
            ]
        return unexpected

    async with running_app(behind) as (_, client):
        results = await asyncio.gather(*(a_user_session(client, n) for n in range(CLIENTS)))
        ready = await client.get("/health/ready")
        listed = await client.get("/api/posts", params={"tag": "pooled", "limit": 100})

    assert [r for r in results if r] == []
    assert ready.status_code == 200, ready.text
    assert listed.json()["total"] == CLIENTS
    assert all(post["likes"] == 1 for post in listed.json()["items"])
