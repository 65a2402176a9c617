"""Uploads through S3 against local disk: time and memory of storing a received file.

Starts moto's S3 server (a process of its own, on a free loopback port, so that what it keeps
in memory is not counted here), then stores files of several
sizes with `S3Media.save_upload` (one request, or a multipart upload past S3_MULTIPART_BYTES)
and `LocalMedia.save_upload` (a rename), and reads them back as the worker does
(`original()`). Prints, per size: seconds and the peak of Python allocations (tracemalloc)
during the operation. The peak shows that a large upload holds one part, not the file.

    .venv/bin/python bench/s3.py [--sizes-mib 1 8 32 64] [--part-mib 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import botocore.session
from pydantic import SecretStr

from app.config import Settings
from app.core.media import LocalMedia, MediaStorage
from app.core.s3 import S3Media

BUCKET = "bench-media"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(port: int, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto's server did not start")


async def measure(action: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Seconds, and the peak of Python allocations in MiB, while `action` runs."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    await action()
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / MIB


async def one(storage: MediaStorage, scratch: Path, size: int, n: int) -> tuple[float, ...]:
    key = f"{n:032x}"
    source = scratch / f"received-{n}"
    with source.open("wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))

    async def store() -> None:
        await storage.save_upload(key, source)

    async def read() -> None:
        async with storage.original(key) as path:
            assert path.stat().st_size == size

    store_s, store_peak = await measure(store)
    read_s, read_peak = await measure(read)
    await storage.delete(key)
    return store_s, store_peak, read_s, read_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--part-mib", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(  # noqa: S603 - our own fixed arguments
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port)
        endpoint = f"http://127.0.0.1:{port}"
        client: Any = botocore.session.get_session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106 - moto's, on loopback
        )
        client.create_bucket(Bucket=BUCKET)
        asyncio.run(compare(endpoint, args.sizes_mib, args.part_mib))
    finally:
        server.terminate()
        server.wait()


async def compare(endpoint: str, sizes_mib: list[int], part_mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="inkwell-bench-s3-") as tmp:
        scratch = Path(tmp)
        settings = Settings.model_validate(
            {
                "data_dir": scratch / "data",
                "jwt_secret_key": "bench-secret-bench-secret-bench-secret-0123",
                "max_upload_bytes": max(sizes_mib) * MIB,
                "s3_multipart_bytes": part_mib * MIB,
            }
        )
        s3 = S3Media(
            settings.model_copy(
                update={
                    "s3_bucket": BUCKET,
                    "s3_endpoint_url": endpoint,
                    "s3_access_key_id": "bench",
                    "s3_secret_access_key": SecretStr("bench"),
                    "s3_region": "us-east-1",
                }
            )
        )
        local = LocalMedia(settings)
        print(f"moto S3 on loopback, parts of {part_mib} MiB")
        print(f"{'size':>8} {'storage':>7} {'store s':>8} {'peak MiB':>9} "
              f"{'read s':>7} {'peak MiB':>9}")  # fmt: skip
        n = 0
        for size_mib in sizes_mib:
            for name, storage in (("local", local), ("s3", s3)):
                n += 1
                figures = await one(storage, scratch, size_mib * MIB, n)
                store_s, store_peak, read_s, read_peak = figures
                print(f"{size_mib:>5} MiB {name:>7} {store_s:>8.3f} {store_peak:>9.1f} "
                      f"{read_s:>7.3f} {read_peak:>9.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
