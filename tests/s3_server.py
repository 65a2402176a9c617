"""moto's S3 server (a real S3 HTTP API on loopback) of the test run's own, on a free port,
behind a TCP proxy that tests may cut to make the bucket unreachable for every process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import botocore.session
from botocore.config import Config

from tests.redis_server import free_port
from tests.tcp_proxy import TcpProxy

STARTUP_TIMEOUT_S = 20.0
ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.proxy = TcpProxy("127.0.0.1", self.port)

    @property
    def endpoint_url(self) -> str:
        """Where clients reach it: through the proxy."""
        return f"http://127.0.0.1:{self.proxy.port}"

    def settings(self, bucket: str) -> dict[str, Any]:
        return {
            "s3_bucket": bucket,
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SECRET_KEY,
        }

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own fixed arguments
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("moto's server exited at start") from None
                time.sleep(0.05)
        else:
            raise RuntimeError(f"moto's server did not start on port {self.port}")
        self.proxy.start()

    def stop(self) -> None:
        self.proxy.stop()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def cut(self) -> None:
        """The bucket unreachable: connections reset, new ones refused."""
        self.proxy.cut()

    def restore(self) -> None:
        self.proxy.restore()

    def client(self) -> Any:
        """A plain (blocking) S3 client straight to the server, to look at the objects."""
        return botocore.session.get_session().create_client(
            "s3",
            region_name=REGION,
            endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        s3 = self.client()
        found: set[str] = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found |= {item["Key"] for item in page.get("Contents", [])}
        return found

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.client().head_object(Bucket=bucket, Key=key)
        return answer
