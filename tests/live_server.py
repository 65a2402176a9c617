"""Inkwell as a real server: `python -m app run` in a subprocess on a free port, for the tests
that need a URL (a browser, a generated client, several processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass
class LiveServer:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API {self.name} exited at start-up:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API {self.name} did not answer /health in time:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)


def start_server(name: str, env: Mapping[str, str], log: Path) -> LiveServer:
    """Starts the API with `env` on top of this process's environment; does not wait."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own fixed arguments
            [sys.executable, "-m", "app", "run", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return LiveServer(name, port, process, log)


@contextmanager
def live_server(name: str, env: Mapping[str, str], log: Path) -> Iterator[LiveServer]:
    """A started, healthy server that is stopped afterwards."""
    server = start_server(name, env, log)
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.stop()


def apart_env(name: str) -> dict[str, str]:
    """Settings of a live server driven by many requests from 127.0.0.1 (rate limits off), whose
    jobs (services mode) wait on a Celery queue of their own rather than reach the suite's worker
    after other tests' clean-up."""
    return {
        "RATE_LIMITS_ENABLED": "false",
        "CELERY_QUEUE": f"inkwell-{name}-{uuid.uuid4().hex[:8]}",
    }
