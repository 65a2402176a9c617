"""The commands every tutorial and deployment guide types work as their users expect (SPEC §8):
`uvicorn app.main:app`, `fastapi run`, `celery -A app.tasks worker`. Each runs as a real
process with the test run's settings in its environment."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.tasks.celery_config import create_celery
from tests.conftest import ROOT, settings_env
from tests.live_server import LiveServer
from tests.redis_server import free_port
from tests.services import CeleryWorker

PING_TIMEOUT_S = 5.0
PING_ATTEMPTS = 6
# uvicorn closes an idle keep-alive connection after 5 s unless told otherwise.
IDLE_PAST_UVICORN_DEFAULT_S = 6.5


def environment(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@contextmanager
def served(name: str, command: Sequence[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """The command started in the project's folder, healthy, stopped afterwards: its URL."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own fixed arguments
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(name, port, process, log)
    try:
        server.wait_until_healthy()
        yield server.url
    finally:
        server.stop()


def test_importing_the_app_module_builds_no_app(settings: Settings) -> None:
    """`app` is made on first use only: importing `app.main` (tests, the command line, the
    worker) reads no settings and opens nothing; neither does importing `app.tasks`."""
    probe = (
        "import sys, app.main, app.tasks\n"
        "assert 'app' not in vars(app.main), 'app.main built an app on import'\n"
        "assert 'app.tasks.celery_app' not in sys.modules, 'app.tasks made the Celery app'\n"
        "assert app.main.app is app.main.app, 'app is built once'\n"
        "from app.tasks.celery_app import celery_app\n"
        "assert app.tasks.celery is celery_app, 'one Celery app, however it is asked for'\n"
        "print(type(app.main.app).__name__)\n"
    )
    result = subprocess.run(  # noqa: S603 - our own fixed arguments
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "InkwellApp"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "uvicorn", "app.main:app"], id="uvicorn"),
        pytest.param([sys.executable, "-m", "fastapi", "run"], id="fastapi-run"),
    ],
)
def test_the_usual_servers_serve_the_api(
    settings: Settings, tmp_path: Path, command: list[str]
) -> None:
    with served(command[2], command, environment(settings), tmp_path / "server.log") as url:
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        # The whole application, not a bare FastAPI: its routes, documents and error format.
        missing = httpx.get(f"{url}/api/posts/0", timeout=10)
        assert missing.status_code == 422
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert missing.headers["x-request-id"]


def test_celery_finds_the_app_in_app_tasks(settings: Settings, tmp_path: Path) -> None:
    """`celery -A app.tasks worker` starts the project's worker, which answers a ping."""
    if not settings.celery_broker_url:
        pytest.skip("a Celery worker needs a broker (INKWELL_TEST_MODE=services)")
    node = f"conventions-{os.getpid()}@localhost"
    log = tmp_path / "worker.log"
    # A queue of its own: the run's worker keeps every job, this one only answers the ping.
    command = [
        sys.executable, "-m", "celery", "-A", "app.tasks", "worker",
        "--pool=solo", f"--hostname={node}", "--queues=inkwell-conventions",
        "--without-gossip", "--without-mingle", "--loglevel=INFO",
    ]  # fmt: skip
    worker = CeleryWorker(settings_env(settings), log, command=command)
    worker.start()
    celery = create_celery(settings)
    try:
        replies: list[dict[str, Any]] | None = None
        for _ in range(PING_ATTEMPTS):
            replies = celery.control.ping(destination=[node], timeout=PING_TIMEOUT_S)
            if replies:
                break
        assert replies == [{node: {"ok": "pong"}}], log.read_text(errors="replace")[-4000:]
        assert "inkwell.process_image" in log.read_text(errors="replace")  # the project's jobs
    finally:
        celery.close()
        worker.stop()


def test_make_run_keeps_idle_connections_open_longer_than_a_load_balancer(
    settings: Settings, tmp_path: Path
) -> None:
    """`python -m app run` holds an idle keep-alive connection for KEEP_ALIVE_SECONDS, not
    uvicorn's 5 s: a proxy (or a pooled client) that reuses it after 6 s idle is answered, not
    met with a closed socket."""
    env = {**environment(settings), "KEEP_ALIVE_SECONDS": "30"}
    command = [sys.executable, "-m", "app", "run"]
    with served("keep-alive", command, env, tmp_path / "api.log") as url:
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/health")
            assert conn.getresponse().read() == b'{"status":"ok"}'
            time.sleep(IDLE_PAST_UVICORN_DEFAULT_S)
            # The same socket: http.client does not reconnect a connection the server closed.
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
