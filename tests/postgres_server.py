"""A PostgreSQL cluster of the test's own: `initdb` into a temporary directory, `pg_ctl` on a free
port, so that a test may restart (or stop) the database under a running app without touching
the run's shared server. As root, the server runs as the `postgres` account (it refuses root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.redis_server import free_port

PG_CTL_TIMEOUT_S = 30
SUPERUSER = "postgres"


def postgres_bindir() -> Path | None:
    """Where `initdb` and `pg_ctl` are: the newest /usr/lib/postgresql/*/bin (Debian does not
    put them on the PATH), else the PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name.split(".")[0]),
    )
    found = candidates[-1] if candidates else shutil.which("initdb")
    return Path(found).parent if found else None


def _server_account() -> str | None:
    """Who the server runs as: this user, or `postgres` when this is root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        return None
    return SUPERUSER


def available() -> str | None:
    """Why no private cluster can be started here, or None if one can."""
    if postgres_bindir() is None:
        return "initdb is not installed (apt-get install postgresql)"
    if os.geteuid() == 0 and _server_account() is None:
        return "running as root and there is no `postgres` account to run the server as"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root and runuser is not installed"
    return None


class PostgresServer:
    """`start()` creates the cluster and starts it; `restart()` is `pg_ctl restart -m fast`;
    `stop()` stops it, keeping its data (`start()` again resumes it); `remove()` stops it and
    removes everything."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("initdb is not installed")
        self.bindir = bindir
        self.port = free_port()
        self.account = _server_account()
        self.directory = Path(tempfile.mkdtemp(prefix="inkwell-postgres-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.started = False
        if self.account is not None:
            entry = pwd.getpwnam(self.account)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy (asyncpg) URL for `database` on this cluster."""
        url = make_url("postgresql+asyncpg://127.0.0.1").set(
            username=SUPERUSER, port=self.port, database=database
        )
        return url.render_as_string(hide_password=False)

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self.account is not None:
            command = ["runuser", "-u", self.account, "--", *command]
        result = subprocess.run(  # noqa: S603 - our own fixed arguments
            command,
            cwd=self.directory,
            capture_output=True,
            timeout=PG_CTL_TIMEOUT_S + 10,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
                f"\n{self.output()}"
            )

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                "initdb",
                "-D", str(self.data),
                "-U", SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )  # fmt: skip
        self._pg_ctl("start")
        self.started = True

    def restart(self, mode: str = "fast") -> None:
        """Stops the server (`-m fast`: every session is ended, as an operator's restart does)
        and starts it again; returns once it accepts connections."""
        self._pg_ctl("restart", "-m", mode)

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.started = False

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.directory}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=60",
            ]
        )
        self._run(
            "pg_ctl",
            action,
            "-D", str(self.data),
            "-l", str(self.log),
            "-o", options,
            "-w",
            "-t", str(PG_CTL_TIMEOUT_S),
            *args,
        )  # fmt: skip
