"""Which process manager should run the image's API: uvicorn's own, or gunicorn's?

Compares, with the same number of worker processes (2 by default, one per core here):

* `uvicorn`: `python -m app run --workers N`, the image's command (uvicorn's multiprocess
  supervisor, in the project's virtual environment);
* `gunicorn`: `gunicorn 'app.main:create_app()' -k uvicorn_worker.UvicornWorker -w N` (the
  maintained `uvicorn-worker` package; `uvicorn.workers` is deprecated), with
  `--no-control-socket` (gunicorn 27 otherwise opens one under $HOME/.gunicorn, and logs an
  error where $HOME is not writable, as for the image's service account);
* `gunicorn-preload`: the same with `--preload`, the application imported once in the
  arbiter and forked into the workers (`--servers uvicorn,gunicorn` leaves it out).

Both run against one scratch PostgreSQL database and one private redis-server, with the same
seeded data and environment, prepared by bench/run.py's `Bench.prepare` (see bench/README.md);
PROMETHEUS_MULTIPROC_DIR is set for both, as `run` does with several workers. Each server in
turn is started and waited for until every worker answers, warmed (every post read once into
the cache, then 3 s of wrk per URL), and measured with wrk on `GET /health` and on the cached,
authenticated `GET /api/posts/{id}` walking every post id. Then one of its workers is killed
with SIGKILL, and the script times how long the process manager takes to start a replacement
and until that replacement answers requests ("not restarted" past `--restart-timeout`): each
probe request is traced to the worker that holds its connection, through /proc/net/tcp and
/proc/PID/fd. Rounds alternate the order (uvicorn first, then gunicorn first, ...). On a
shared machine, every measurement first waits until the CPUs are idle (`--quiet-threshold`),
counts the CPU time that processes other than its own used meanwhile ("others' CPU"), and is
made again, up to `--attempts` times, when that passed `--disturbed`; the least disturbed
attempt is kept and printed with its share.

gunicorn and uvicorn-worker are not project dependencies. The script installs them with the
project's pinned requirements.txt into a throwaway virtual environment in the system's
temporary directory (`uv venv --python` this interpreter, `uv pip install -r requirements.txt`,
then `uv pip install gunicorn uvicorn-worker`), named after a hash of requirements.txt so that
later runs reuse it; the project itself is found through PYTHONPATH and the working directory,
so both servers run the same code with the same pinned uvicorn, uvloop and httptools.
`--gunicorn-venv` names another environment holding gunicorn and uvicorn-worker instead.

    .venv/bin/python bench/servers.py            # 2 rounds, 10 s per measurement
    .venv/bin/python bench/servers.py --quick    # 1 round, 3 s per measurement
    .venv/bin/python bench/servers.py --servers uvicorn,gunicorn

Needs wrk, redis-server and PostgreSQL, like bench/run.py. The figures also go to
bench/results/servers.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run import (
    LUA_READ_BY_ID,
    PYTHON,
    READER,
    RESULTS_DIR,
    ROOT,
    WRK_MISSING,
    Bench,
    BenchError,
    Measurement,
    Options,
    Processes,
    Seeded,
    Wrk,
    add_service_arguments,
    free_port,
    post_json,
    run_and_clean_up,
    say,
    wait_for_http,
    warm_posts,
)

SERVERS = ("uvicorn", "gunicorn", "gunicorn-preload")
DEFAULT_SERVERS = ",".join(SERVERS)
GUNICORN_PACKAGES = ("gunicorn", "uvicorn-worker")
SCENARIOS = ("GET /health", "GET /api/posts/{id} cached")


# --------------------------------------------------------------------------- gunicorn


def gunicorn_venv(uv: str, python: str) -> Path:
    """A virtual environment with requirements.txt, gunicorn and uvicorn-worker (reused)."""
    requirements = ROOT / "requirements.txt"
    digest = hashlib.sha256(
        requirements.read_bytes() + " ".join(GUNICORN_PACKAGES).encode() + python.encode()
    ).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"inkwell-bench-gunicorn-{digest}"
    ready = venv / ".inkwell-ready"
    if ready.exists():
        return venv
    say(f"installing gunicorn and uvicorn-worker into {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    venv_python = str(venv / "bin" / "python")
    for args in (
        [uv, "venv", "--quiet", "--python", python, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", venv_python, "-r", str(requirements)],
        [uv, "pip", "install", "--quiet", "--python", venv_python, *GUNICORN_PACKAGES],
    ):
        done = subprocess.run(  # noqa: S603 - fixed command lines
            args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    ready.touch()
    return venv


def versions(python: str, packages: Iterable[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    done = subprocess.run(  # noqa: S603 - fixed command line
        [python, "-c", code, *packages], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"cannot read the versions in {python}:\n{done.stderr}")
    found: dict[str, str] = json.loads(done.stdout)
    return found


# --------------------------------------------------------------------------- processes


def worker_pids(master: int) -> list[int]:
    """The live child processes of `master` (its workers), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == master and state not in "ZX" and b"resource_tracker" not in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def _server_sockets(port: int) -> dict[int, int]:
    """Established connections to `port` on loopback: the client's port -> the server side's
    socket inode."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], int(cols[9])
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode:
                found[int(remote.rsplit(":", 1)[1], 16)] = inode
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def answering(port: int, workers: Iterable[int], probes: int = 8) -> tuple[set[int], int]:
    """Which of `workers` answer `GET /health`, and how many of the probes failed.

    Opens `probes` keep-alive connections one after another (each is accepted by whichever
    worker wins it), has each answered, then finds the worker holding each connection's server
    side while they are still open.
    """
    conns: list[http.client.HTTPConnection] = []
    client_ports: list[int] = []
    failures = 0
    try:
        for _ in range(probes):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conns.append(conn)
            try:
                conn.request("GET", "/health")
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                failures += 1
                continue
            if response.status == 200 and conn.sock is not None:
                client_ports.append(conn.sock.getsockname()[1])
            else:
                failures += 1
        sockets = _server_sockets(port)
        answered = {sockets[p] for p in client_ports if p in sockets}
        return {pid for pid in workers if _socket_inodes(pid) & answered}, failures
    finally:
        for conn in conns:
            conn.close()


@dataclass
class Restart:
    """One worker killed with SIGKILL: seconds until a replacement process exists, and until
    it answers requests (None: not within the timeout)."""

    killed_pid: int
    replacement_pid: int | None
    spawned_s: float | None
    answering_s: float | None
    failed_probes: int  # probe requests that failed meanwhile (the other worker should answer)
    timeout_s: float
    others_cpu: float = 0.0  # the share of the CPUs other processes used meanwhile

    def describe(self) -> str:
        if self.spawned_s is None:
            return f"not restarted within {self.timeout_s:.0f} s"
        answered = (
            f"answering after {self.answering_s:.2f} s"
            if self.answering_s is not None
            else f"not answering within {self.timeout_s:.0f} s"
        )
        return (
            f"replacement process after {self.spawned_s:.2f} s, {answered} "
            f"({self.failed_probes} failed probes meanwhile; others' CPU {self.others_cpu:.0%})"
        )


def kill_one_worker(
    proc: subprocess.Popen[bytes], port: int, workers: int, timeout: float
) -> Restart:
    before = worker_pids(proc.pid)
    if len(before) != workers:
        raise BenchError(f"expected {workers} workers under pid {proc.pid}, found {before}")
    victim = before[0]
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    result = Restart(victim, None, None, None, 0, timeout)
    while (elapsed := time.monotonic() - started) < timeout:
        if proc.poll() is not None:
            raise BenchError(f"the process manager exited ({proc.returncode}) after the kill")
        new = [pid for pid in worker_pids(proc.pid) if pid not in before]
        if new and result.spawned_s is None:
            result.spawned_s, result.replacement_pid = elapsed, new[0]
        served, failed = answering(port, new)
        result.failed_probes += failed
        if served:
            result.answering_s = time.monotonic() - started
            break
        time.sleep(0.02)
    return result


# --------------------------------------------------------------------------- the machine


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """Clock ticks since boot over every CPU: (all, idle), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values), values[3] + values[4]


def cpu_busy(interval: float = 1.0) -> float:
    """The share of the machine's CPU time that was busy over `interval` seconds."""
    total, idle = _machine_ticks()
    time.sleep(interval)
    total2, idle2 = _machine_ticks()
    return 1.0 - (idle2 - idle) / max(1, total2 - total)


def wait_until_quiet(threshold: float, timeout: float) -> float:
    """Waits, up to `timeout` s, until the CPUs are at most `threshold` busy (the servers are
    idle then, so this is other processes). Returns the last busy share seen."""
    deadline = time.monotonic() + timeout
    busy = cpu_busy()
    if busy > threshold:
        say(f"  CPUs {busy:.0%} busy before a measurement: waiting for <= {threshold:.0%}")
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def _own_ticks() -> int:
    """CPU ticks of this process's descendants (the servers and their workers, redis-server,
    a running wrk), including the children they reaped, from /proc/PID/stat."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    mine = {os.getpid()}
    changed = True
    while changed:
        found = {pid for pid, ppid in parents.items() if ppid in mine and pid not in mine}
        mine |= found
        changed = bool(found)
    mine.discard(os.getpid())
    return sum(ticks[pid] for pid in mine)


class OthersCpu:
    """Measures, over a block, the CPU time that other processes used: the machine's busy time
    less this script's own and its descendants' (the servers, their workers, redis-server and
    wrk, reaped ones too), as a share of every CPU's time. PostgreSQL's backends count as
    other: they have little to do for cached reads."""

    share: float = 0.0

    def _sample(self) -> tuple[float, int, int]:
        t = os.times()  # this process, and the children it reaped (wrk)
        reaped = t.user + t.system + t.children_user + t.children_system
        total, idle = _machine_ticks()
        return reaped, total - idle, _own_ticks()

    def __enter__(self) -> OthersCpu:
        self._total_start = _machine_ticks()[0]
        self._start = self._sample()
        return self

    def __exit__(self, *_: object) -> None:
        reaped, busy, own = self._sample()
        total = _machine_ticks()[0] - self._total_start
        ours = (reaped - self._start[0]) * CLOCK_TICKS + (own - self._start[2])
        others = (busy - self._start[1]) - ours
        self.share = max(0.0, others / max(1, total))


# --------------------------------------------------------------------------- the run


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    base: str
    log: Path
    startup_s: float  # launch until every worker answers


@dataclass
class ServerRun:
    server: str
    round: int
    startup_s: float
    measurements: list[Measurement] = field(default_factory=list)
    others_cpu: list[float] = field(default_factory=list)  # others' CPU share during each
    attempts: list[int] = field(default_factory=list)  # measurements made to get each
    restart: Restart | None = None


@dataclass
class ServersBench:
    options: Options
    servers: tuple[str, ...]
    workers: int
    rounds: int
    restart_timeout: float
    quiet_threshold: float
    quiet_timeout: float
    disturbed: float  # others' CPU share above which a measurement is made again
    attempts: int  # at most, per measurement; the least disturbed one is kept
    gunicorn: Path  # the gunicorn executable
    bench: Bench
    logs: Path | None = None  # where to copy the servers' logs
    runs: list[ServerRun] = field(default_factory=list)

    @property
    def processes(self) -> Processes:
        return self.bench.processes

    def command(self, server: str, port: int) -> list[str]:
        if server == "uvicorn":
            return [
                PYTHON,
                "-m",
                "app",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(self.workers),
            ]
        preload = ["--preload"] if server == "gunicorn-preload" else []
        return [
            str(self.gunicorn),
            "app.main:create_app()",
            "--worker-class",
            "uvicorn_worker.UvicornWorker",
            "--workers",
            str(self.workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            *preload,
        ]

    def start(self, server: str, redis_port: int, round_: int) -> Running:
        workdir = self.bench.workdir
        port = free_port()
        log = workdir / f"{server}-{round_}.log"
        metrics = workdir / f"prometheus-{server}-{round_}"
        metrics.mkdir()
        env = {
            **os.environ,
            **self.bench.api_env(redis_port, cache=True),
            "WEB_CONCURRENCY": str(self.workers),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "PYTHONPATH": str(ROOT),
        }
        env.pop("VIRTUAL_ENV", None)
        started = time.monotonic()
        proc = self.processes.start(self.command(server, port), log, env)
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health", proc, log, 90)
        wait_for_http(f"{base}/health/ready", proc, log, 30)
        deadline = started + 120
        while True:
            pids = worker_pids(proc.pid)
            if len(pids) == self.workers and answering(port, pids, 16)[0] == set(pids):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchError(f"{server}: the {self.workers} workers never all answered")
            time.sleep(0.05)
        startup = time.monotonic() - started
        say(f"  {server} (pid {proc.pid}, workers {pids}) on {base} in {startup:.1f} s, log {log}")
        return Running(server, proc, port, base, log, startup)

    def measure(self, server: str, redis_port: int, seeded: Seeded, wrk: Wrk, round_: int) -> None:
        o = self.options
        say(f"round {round_}: {server}")
        running = self.start(server, redis_port, round_)
        run = ServerRun(server, round_, running.startup_s)
        self.runs.append(run)
        try:
            base = running.base
            token = post_json(
                f"{base}/api/token",
                {"username": seeded.usernames[READER], "password": seeded.passwords[READER]},
            )["access_token"]
            read_script = LUA_READ_BY_ID.format(
                token=token, first_id=seeded.first_post_id, count=seeded.posts
            )
            health_url, read_url = f"{base}/health", f"{base}/api/posts/{seeded.first_post_id}"
            warm_posts(base, token, seeded.first_post_id, seeded.posts)
            for scenario, url, script in (
                (SCENARIOS[0], health_url, ""),
                (SCENARIOS[1], read_url, read_script),
            ):
                wrk.run("warm-up", url, o.connections, o.warmup, script)
                tries: list[tuple[float, Measurement]] = []
                while len(tries) < self.attempts:
                    wait_until_quiet(self.quiet_threshold, self.quiet_timeout)
                    with OthersCpu() as others:
                        m = wrk.run(scenario, url, o.connections, o.seconds, script)
                    tries.append((others.share, m))
                    say(
                        f"  {scenario}: {m.rps:,.0f} req/s, p50 {m.p50_ms:.2f} ms, "
                        f"p99 {m.p99_ms:.2f} ms; others' CPU {others.share:.0%}"
                    )
                    if others.share <= self.disturbed:
                        break
                share, m = min(tries, key=lambda t: t[0])
                run.measurements.append(m)
                run.others_cpu.append(share)
                run.attempts.append(len(tries))
            restarts: list[Restart] = []
            while len(restarts) < self.attempts:
                wait_until_quiet(self.quiet_threshold, self.quiet_timeout)
                with OthersCpu() as others:
                    restart = kill_one_worker(
                        running.proc, running.port, self.workers, self.restart_timeout
                    )
                restart.others_cpu = others.share
                restarts.append(restart)
                say(f"  killed worker {restart.killed_pid}: {restart.describe()}")
                if others.share <= self.disturbed or restart.answering_s is None:
                    break
            run.restart = min(restarts, key=lambda r: r.others_cpu)
        finally:
            self.processes.stop(running.proc)
            if self.logs is not None:
                self.logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(running.log, self.logs / running.log.name)

    def run(self) -> None:
        o = self.options
        wrk = Wrk(o.threads, o.timeout, self.bench.workdir)
        redis_port, seeded = self.bench.prepare()
        for round_ in range(1, self.rounds + 1):
            # Alternate the order (A B, B A, ...) so that drift on the machine cancels out.
            order = self.servers if round_ % 2 else tuple(reversed(self.servers))
            for server in order:
                self.measure(server, redis_port, seeded, wrk, round_)


# --------------------------------------------------------------------------- report


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items)


def summary(runs: list[ServerRun], disturbed: float) -> dict[str, dict[str, dict[str, float]]]:
    """server -> scenario -> the means over the rounds (req/s, p50, p99; errors summed) of the
    undisturbed measurements, or of all of them when every one was disturbed."""
    found: dict[str, dict[str, list[tuple[float, Measurement]]]] = {}
    for r in runs:
        for m, share in zip(r.measurements, r.others_cpu, strict=True):
            found.setdefault(r.server, {}).setdefault(m.scenario, []).append((share, m))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for server, scenarios in found.items():
        for scenario, tries in scenarios.items():
            quiet = [m for share, m in tries if share <= disturbed]
            ms = quiet or [m for _, m in tries]
            out.setdefault(server, {})[scenario] = {
                "rps": mean(m.rps for m in ms),
                "p50_ms": mean(m.p50_ms for m in ms),
                "p99_ms": mean(m.p99_ms for m in ms),
                "errors": float(sum(m.error_count for m in ms)),
                "measurements": float(len(ms)),
                "disturbed": float(not quiet),
            }
    return out


def table(rows: list[tuple[str, ...]], left: int = 2) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = zip(row, widths, strict=True)
        lines.append(
            "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(cells))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def print_report(sb: ServersBench, info: dict[str, Any]) -> None:
    o = sb.options
    reference = sb.servers[0]
    print()
    print(
        f"API servers, {sb.workers} workers each: wrk {o.threads} threads, {o.connections} "
        f"connections, {o.seconds:.0f} s per measurement, {sb.rounds} round(s), "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    for server in sb.servers:
        print(f"  {server + ':':<17} {info['commands'][server]}")
    print(
        f"  versions: uvicorn {info['uvicorn']}; gunicorn {info['gunicorn']}, "
        f"uvicorn-worker {info['uvicorn-worker']} (with uvicorn {info['gunicorn_uvicorn']})"
    )
    print()
    runs = sorted(sb.runs, key=lambda r: (sb.servers.index(r.server), r.round))
    rows: list[tuple[str, ...]] = [
        ("server", "scenario", "round", "req/s", "p50 ms", "p99 ms", "errors", "others' CPU")
    ]
    for r in runs:
        for m, share, tries in zip(r.measurements, r.others_cpu, r.attempts, strict=True):
            errors = ", ".join(f"{k} {v}" for k, v in m.errors.items() if v) or "0"
            rows.append(
                (
                    r.server,
                    m.scenario,
                    str(r.round),
                    f"{m.rps:,.0f}",
                    f"{m.p50_ms:.2f}",
                    f"{m.p99_ms:.2f}",
                    errors,
                    f"{share:.0%}" + (f" ({tries} tries)" if tries > 1 else ""),
                )
            )
    print(table(rows))
    print()
    means = summary(sb.runs, sb.disturbed)
    rows = [
        (
            f"mean (others' CPU <= {sb.disturbed:.0%})",
            "server",
            "runs",
            "req/s",
            f"vs {reference}",
            "p50 ms",
            "p99 ms",
            "errors",
        )
    ]
    base = means.get(reference, {})
    for scenario in SCENARIOS:
        for server in sb.servers:
            s = means.get(server, {}).get(scenario)
            if s is None:
                continue
            ref = base.get(scenario)
            ratio = f"{s['rps'] / ref['rps']:.2f}x" if ref else ""
            rows.append(
                (
                    scenario,
                    server,
                    f"{s['measurements']:.0f}" + (" disturbed" if s["disturbed"] else ""),
                    f"{s['rps']:,.0f}",
                    ratio,
                    f"{s['p50_ms']:.2f}",
                    f"{s['p99_ms']:.1f}",
                    f"{s['errors']:.0f}",
                )
            )
    print(table(rows))
    print()
    print("Startup (launch until every worker answers); then one worker killed with SIGKILL:")
    for r in runs:
        restart = r.restart.describe() if r.restart else "not measured"
        print(f"  {r.server:<16} round {r.round}: started in {r.startup_s:.2f} s; {restart}")


def as_json(sb: ServersBench, info: dict[str, Any]) -> dict[str, Any]:
    return {
        **info,
        "servers": list(sb.servers),
        "workers": sb.workers,
        "rounds": sb.rounds,
        "seconds_per_measurement": sb.options.seconds,
        "connections": sb.options.connections,
        "wrk_threads": sb.options.threads,
        "cpus": os.cpu_count(),
        "runs": [
            {
                "server": r.server,
                "round": r.round,
                "startup_s": r.startup_s,
                "measurements": [
                    {
                        **asdict(m),
                        "error_count": m.error_count,
                        "others_cpu": share,
                        "attempts": tries,
                    }
                    for m, share, tries in zip(
                        r.measurements, r.others_cpu, r.attempts, strict=True
                    )
                ],
                "restart": asdict(r.restart) if r.restart else None,
            }
            for r in sb.runs
        ],
        "means": summary(sb.runs, sb.disturbed),
    }


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        description="uvicorn --workers N against gunicorn -k uvicorn_worker.UvicornWorker -w N."
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s measurements")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order")
    parser.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"comma-separated, the first is the reference; of {', '.join(SERVERS)}",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--restart-timeout", type=float, default=30.0)
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.25,
        help="before each measurement, wait until the CPUs are at most this busy (0-1)",
    )
    parser.add_argument(
        "--quiet-timeout", type=float, default=120.0, help="seconds to wait for that at most"
    )
    parser.add_argument(
        "--disturbed",
        type=float,
        default=0.10,
        help="measure again when other processes used more than this share of the CPUs",
    )
    parser.add_argument(
        "--attempts", type=int, default=3, help="measurements at most, the least disturbed kept"
    )
    add_service_arguments(parser)
    parser.add_argument(
        "--gunicorn-venv", type=Path, help="an environment with gunicorn and uvicorn-worker"
    )
    parser.add_argument("--logs", type=Path, help="copy the servers' logs into this directory")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "servers.json")
    args = parser.parse_args(argv)
    args.servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    unknown = [s for s in args.servers if s not in SERVERS]
    if unknown or not args.servers:
        parser.error(f"--servers: unknown {unknown}; choose from {', '.join(SERVERS)}")
    if args.quick:
        args.rounds = 1
    seconds = 3.0 if args.quick else args.duration
    options = Options(
        seconds=seconds,
        warmup=min(3.0, seconds),
        connections=args.connections,
        high_connections=args.connections,
        threads=args.threads,
        login_connections=0,
        login_seconds=0.0,
        posts=args.posts,
        timeout=10.0,
        admin_url=args.admin_url,
        redis_server=args.redis_server,
        output=args.output,
    )
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_MISSING.replace("make bench", "bench/servers.py"), file=sys.stderr)
        return 2
    if not Path(options.redis_server).exists():
        print(f"redis-server not found at {options.redis_server} (--redis-server)", file=sys.stderr)
        return 2
    uv = shutil.which("uv", path=str(Path(PYTHON).parent)) or shutil.which("uv")
    if args.gunicorn_venv is None and uv is None:
        print("uv is needed to install gunicorn (or pass --gunicorn-venv)", file=sys.stderr)
        return 2

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="inkwell-servers-") as tmp:
        bench = Bench(options, Path(tmp))
        measured: list[tuple[ServersBench, dict[str, Any]]] = []

        def measure() -> None:
            venv = args.gunicorn_venv or gunicorn_venv(str(uv), PYTHON)
            sb = ServersBench(
                options=options,
                servers=args.servers,
                workers=args.workers,
                rounds=args.rounds,
                restart_timeout=args.restart_timeout,
                quiet_threshold=args.quiet_threshold,
                quiet_timeout=args.quiet_timeout,
                disturbed=args.disturbed,
                attempts=max(1, args.attempts),
                gunicorn=venv / "bin" / "gunicorn",
                bench=bench,
                logs=args.logs,
            )
            theirs = versions(
                str(venv / "bin" / "python"), ("gunicorn", "uvicorn-worker", "uvicorn")
            )
            info: dict[str, Any] = {
                "started_at": started_at,
                "uvicorn": versions(PYTHON, ("uvicorn",))["uvicorn"],
                "gunicorn": theirs["gunicorn"],
                "uvicorn-worker": theirs["uvicorn-worker"],
                "gunicorn_uvicorn": theirs["uvicorn"],
                "gunicorn_venv": str(venv),
                "commands": {
                    s: " ".join(sb.command(s, 8000))
                    .replace(PYTHON, "python")
                    .replace(str(sb.gunicorn), "gunicorn")
                    for s in sb.servers
                },
            }
            sb.run()
            measured.append((sb, info))

        failed = run_and_clean_up(bench, measure)
        if failed is not None:
            return failed
    sb, info = measured[0]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(as_json(sb, info), indent=2) + "\n")
    print_report(sb, info)
    print()
    print(f"JSON: {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
