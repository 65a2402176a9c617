"""Real services the tests run themselves: an SMTP server that keeps what it receives, and a
Celery worker process."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
WORKER_READY_TIMEOUT_S = 30.0


class _Collector:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"


class SmtpServer:
    """aiosmtpd on a free port, in a thread of the test process."""

    def __init__(self) -> None:
        self.port = free_port()
        self._collector = _Collector()
        self._controller = Controller(self._collector, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[EmailMessage]:
        return self._collector.messages

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, to: str, timeout: float = 15.0, count: int = 1) -> list[EmailMessage]:
        """The messages sent to `to`, waiting until there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages if to.lower() in str(m["To"]).lower()]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content: Any = part.get_content()
    return str(content)


class CeleryWorker:
    """`python -m app worker` as a subprocess, with the test run's settings in its environment."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        concurrency: int = 2,
        loglevel: str = "INFO",
        command: Sequence[str] | None = None,
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.command = list(command) if command else None  # instead of `python -m app worker`
        self.log_path = log_path
        self.concurrency = concurrency
        self.loglevel = loglevel
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, pool: str = "prefork") -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own command
            self.command or [sys.executable, "-m", "app", "worker",
             f"--concurrency={self.concurrency}", f"--pool={pool}",
             f"--loglevel={self.loglevel}"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as written:
                written.seek(offset)
                if b" ready." in written.read():
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the Celery worker did not start; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), like a crashed machine."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None
