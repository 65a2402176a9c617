"""The RealWorld project's own test suite, run with the Bruno CLI against a live Inkwell at
/conduit: one test per folder of the collection, in either test mode.

The suite is read from `../shared/realworld/` beside the repository (REALWORLD_SUITE_DIR
elsewhere), never copied into it; the CLI is pinned in tests/realworld/package-lock.json and
installed there with `npm ci`. Without the suite or npm the tests skip, except with CI=true:
there they fail, so that nothing is skipped on CI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from app.config import Settings
from tests.conftest import ON_CI, ROOT, settings_env, tidied_up_after
from tests.live_server import LiveServer, apart_env, live_server
from tests.redis_server import RedisServer

HARNESS = ROOT / "tests" / "realworld"
BRU = HARNESS / "node_modules" / ".bin" / "bru"
LOCK_MARKER = HARNESS / "node_modules" / ".inkwell-lock.sha256"
NPM_CI_TIMEOUT_S = 600
FOLDER_TIMEOUT_S = 300
# The installation (first test only) and a folder's run, with room to spare on a slow machine.
TEST_TIMEOUT_S = NPM_CI_TIMEOUT_S + FOLDER_TIMEOUT_S + 60

# In the order of the suite's README.
FOLDERS = (
    "auth",
    "articles",
    "comments",
    "favorites",
    "feed",
    "pagination",
    "profiles",
    "tags",
    "errors-auth",
    "errors-articles",
    "errors-comments",
    "errors-profiles",
    "errors-authorization",
)


def skip_or_fail(message: str) -> NoReturn:
    """A missing suite or tool skips on a laptop; on CI it fails, so nothing is skipped there."""
    if ON_CI:
        pytest.fail(f"{message} (CI=true: this test may not be skipped)")
    pytest.skip(message)


def suite_dir() -> Path:
    """REALWORLD_SUITE_DIR, else `../shared/realworld` beside this checkout, else beside the
    repository this one was cloned from when that is a local folder (a CI clone in a scratch
    directory of a checkout that sits beside `shared/`)."""
    configured = os.environ.get("REALWORLD_SUITE_DIR")
    if configured:
        return Path(configured)
    beside = ROOT.parent / "shared" / "realworld"
    if beside.is_dir():
        return beside
    origin = subprocess.run(  # noqa: S603 - our own fixed arguments
        ["git", "-C", str(ROOT), "remote", "get-url", "origin"],  # noqa: S607 - git on PATH
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin and "://" not in origin and ":" not in origin.split("/")[0]:
        upstream = Path(origin.removeprefix("file:")).resolve()
        if (upstream.parent / "shared" / "realworld").is_dir():
            return upstream.parent / "shared" / "realworld"
    return beside


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the Bruno collection: the CLI may write beside the files it runs."""
    source = suite_dir() / "bruno"
    if not (source / "bruno.json").is_file():
        skip_or_fail(f"the RealWorld suite is not at {source} (set REALWORLD_SUITE_DIR)")
    target = tmp_path_factory.mktemp("realworld") / "bruno"
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def bru() -> Path:
    """The pinned Bruno CLI: `npm ci` unless node_modules was installed from this very lock."""
    npm = shutil.which("npm")
    if npm is None:
        skip_or_fail("npm is not installed (Node.js 20 or later is needed)")
    lock = hashlib.sha256((HARNESS / "package-lock.json").read_bytes()).hexdigest()
    if not (BRU.exists() and LOCK_MARKER.is_file() and LOCK_MARKER.read_text().strip() == lock):
        env = {**os.environ, "npm_config_update_notifier": "false"}
        result = subprocess.run(  # noqa: S603 - our own fixed arguments
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=HARNESS,
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}{result.stderr}"
        LOCK_MARKER.write_text(lock + "\n")
    return BRU


@pytest.fixture(scope="module", autouse=True)
async def _tidy_up(settings: Settings, redis_server: RedisServer | None) -> AsyncIterator[None]:
    """The accounts and articles the suite leaves are gone before the next module starts."""
    async with tidied_up_after(settings, redis_server):
        yield


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    logs = tmp_path_factory.mktemp("conduit-suite")
    # One run registers 21 users and logs in 4 times, all from 127.0.0.1.
    env = settings_env(settings) | apart_env("conduit")
    with live_server("conduit", env, logs / "api.log") as live:
        yield live


def failures(report: Any) -> list[str]:
    """Every failed request, assertion and check of a Bruno JSON report, one line each."""
    lines = []
    for iteration in report if isinstance(report, list) else [report]:
        for result in iteration.get("results", []):
            name = result.get("path") or result.get("name", "?")
            status = (result.get("response") or {}).get("status", "-")
            if result.get("error"):
                lines.append(f"{name} [{status}]: request failed: {result['error']}")
            checks = (
                result.get("assertionResults", [])
                + result.get("testResults", [])
                + result.get("preRequestTestResults", [])
                + result.get("postResponseTestResults", [])
            )
            for check in checks:
                if check.get("status") == "pass":
                    continue
                what = check.get("lhsExpr")
                what = f"{what} {check.get('rhsExpr')}" if what else check.get("description")
                lines.append(f"{name} [{status}]: {what}: {check.get('error', check['status'])}")
    return lines


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("folder", FOLDERS)
async def test_realworld_folder(
    folder: str,
    collection: Path,
    bru: Path,
    server: LiveServer,
    tmp_path: Path,
) -> None:
    """Async, with the CLI as an asyncio subprocess: the run's event loop goes on meanwhile, so
    nothing of this process's (an outbox relay's transaction on the shared SQLite file, say)
    stands still holding a lock the server waits for."""
    report_file = tmp_path / f"{folder}.json"
    process = await asyncio.create_subprocess_exec(
        str(bru),
        "run",
        folder,
        "--env",
        "local",
        "--env-var",
        f"host={server.url}/conduit",
        "--sandbox",
        "safe",
        "--reporter-json",
        str(report_file),
        cwd=collection,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), FOLDER_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"bru run {folder} took over {FOLDER_TIMEOUT_S} s")
    run = subprocess.CompletedProcess(
        [str(bru), "run", folder],
        process.returncode if process.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )
    assert report_file.is_file(), (
        f"bru run {folder} wrote no report (exit {run.returncode}):\n"
        f"{run.stdout[-4000:]}{run.stderr[-4000:]}\n--- server log ---\n{server.output()}"
    )
    report = json.loads(report_file.read_text())
    failed = failures(report)
    summaries = [i.get("summary", {}) for i in (report if isinstance(report, list) else [report])]
    total = sum(s.get("totalRequests", 0) for s in summaries)
    assert total > 0, f"bru run {folder} ran no request:\n{run.stdout[-4000:]}"
    if failed or run.returncode != 0:
        pytest.fail(
            f"{len(failed)} failed check(s) in {folder} ({total} requests, exit "
            f"{run.returncode}):\n" + "\n".join(failed or [run.stdout[-4000:], run.stderr[-4000:]]),
            pytrace=False,
        )
