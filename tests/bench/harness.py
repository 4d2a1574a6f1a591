"""What every benchmark needs: its own servers and processes on 127.0.0.1, started and always cleaned up.

A benchmark runs inside ``with Bench("name") as bench:``, which gives it

- its own ``redis-server`` on a free port (no persistence: the figures measure wapipe, not the disk;
  production runs AOF, see deploy/), so it may flush freely and never touches another session's data;
- optionally its own PostgreSQL database on the machine's server (``bench.database()``: created, migrated,
  dropped WITH (FORCE) at the end);
- ``bench.start(name, argv, env)``: a subprocess in its own process group, output to a log file under the
  bench's temporary folder; every process is SIGTERMed (then SIGKILLed, whole group) on exit, whatever
  happened;
- helpers to start gunicorn with the ingress configuration and Celery workers exactly as ``wapipe`` does.

Nothing here asserts a time: benchmarks print figures (medians of several runs with min-max) and the load
the machine was under while they ran, because these machines are shared and noisy.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ADMIN_DATABASE_URL = os.environ.get(
    "WAPIPE_TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# How often the bench analyzes its database when the server's autovacuum is off (Bench.database).
ANALYZE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own 127.0.0.1 server
            return 200 <= response.status < 500
    except OSError:
        return False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Bench:
    """One benchmark run's servers and processes; a context manager that always cleans up."""

    name: str
    keep_logs: bool = False
    folder: Path = field(init=False)
    redis_url: str = field(init=False)
    database_url: str | None = field(init=False, default=None)
    _procs: list[Proc] = field(init=False, default_factory=list)
    _started: int = field(init=False, default=0)
    _database: str | None = field(init=False, default=None)
    _redis_proc: Proc | None = field(init=False, default=None)
    _analyzing: threading.Event | None = field(init=False, default=None)

    def __enter__(self) -> Bench:
        self.folder = Path(tempfile.mkdtemp(prefix=f"wapipe-bench-{self.name}-"))
        # A plain `kill` must clean up too: turn SIGTERM into SystemExit so __exit__ runs.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            self._start_redis()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._analyzing is not None:
            self._analyzing.set()
        for proc in reversed(self._procs):
            self.stop(proc)
        if self._database:
            with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)')
        if self.keep_logs:
            print(f"[bench] logs kept in {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    # --- servers -----------------------------------------------------------------------------------

    def _start_redis(self) -> None:
        port = free_port()
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(self.folder), "--databases", "2",
        ]  # fmt: skip
        self._redis_proc = self.start("redis", argv)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.redis_url)
        wait_until(lambda: _pings(client), 10, "redis-server")

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def database(self) -> str:
        """A fresh PostgreSQL database built from the migrations; dropped when the bench ends."""
        from shared.db.migrate import migrate

        name = f"wapipe_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._database = name
        self.database_url = psycopg.conninfo.make_conninfo(ADMIN_DATABASE_URL, dbname=name)
        migrate(self.database_url)
        self._stand_in_for_autovacuum()
        return self.database_url

    def _stand_in_for_autovacuum(self) -> None:
        """Run ``ANALYZE`` every few seconds when the server's autovacuum is off, as on the test machines.

        wapipe's statements are prepared (psycopg does so from a statement's sixth run), and a plan made
        while a table was nearly empty scans it whole; in production autovacuum's ANALYZE of a growing
        table replaces such plans within a minute. With autovacuum off nothing does, and every run would
        measure sequential scans of an ever larger ``messages`` table rather than wapipe.
        """
        assert self.database_url is not None
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SHOW autovacuum").fetchone()
        if row is None or row[0] == "on":
            return
        print(f"[bench] autovacuum is off on this server: ANALYZE every {ANALYZE_SECONDS:g} s in its place")
        stop = self._analyzing = threading.Event()
        url = self.database_url

        def analyze() -> None:
            while not stop.wait(ANALYZE_SECONDS):
                with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("ANALYZE")

        threading.Thread(target=analyze, name="bench-analyze", daemon=True).start()

    # --- processes ---------------------------------------------------------------------------------

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for our children: the bench's servers, quiet logs, plus ``extra``."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(("WAPIPE_", "TWILIO_"))}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "WAPIPE_REDIS_URL": self.redis_url,
                "WAPIPE_LOG_FORMAT": "json",
                "WAPIPE_DATA_DIR": str(self.folder / "data"),
                "PROMETHEUS_MULTIPROC_DIR": "",
            }
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR")
        if self.database_url:
            env["WAPIPE_DATABASE_URL"] = self.database_url
        env.update(extra or {})
        return env

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Proc:
        self._started += 1
        log = self.folder / f"{name.replace(' ', '_').replace('/', '_')}-{self._started}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                list(argv),
                cwd=REPO_ROOT,
                env=dict(env) if env is not None else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stop() reaches its children, and only them
            )
        proc = Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def start_provider(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Proc:
        """The fake provider, ahead of everything else for the CPU: a real provider has machines of its
        own, and its arrival times are what pacing is judged by. Starved of CPU it would run a backlog of
        requests at once and stamp them as arriving together (seen: 1,125 "arrivals" in one second at a
        rate of 1,000/s, while with priority the same runs peaked at 947)."""
        proc = self.start("fake provider", argv, env)
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, -10)
        except OSError:
            print(
                "[bench] could not raise the fake provider's priority (needs root): under load its"
                " arrival times bunch, and the busiest second reads high",
                flush=True,
            )
        return proc

    def stop(self, proc: Proc, timeout: float = 20) -> None:
        if proc.popen.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=timeout)
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)
        if proc in self._procs:
            self._procs.remove(proc)

    def gunicorn(
        self, app: str, *, port: int | None = None, workers: int = 2, env: Mapping[str, str] | None = None
    ) -> tuple[Proc, str]:
        """gunicorn with the ingress configuration (``wapipe web``'s argv) serving ``app``; ready."""
        from shared.commands.web import gunicorn_argv

        port = port or free_port()
        argv = [*gunicorn_argv("127.0.0.1", port, workers)[:-1], app]
        proc = self.start(f"gunicorn {app}", argv, env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _alive_or_raise(proc) and http_ok(url + "/healthz"), 30, f"gunicorn {app}")
        return proc, url

    def worker(
        self,
        queues: Iterable[str],
        *,
        concurrency: int,
        env: Mapping[str, str] | None = None,
        app: str = "workers",
        pool: str = "prefork",
    ) -> Proc:
        """A Celery worker with ``wapipe worker``'s flags, ready to consume."""
        from shared.commands.worker import celery_argv

        queue_list = list(queues)
        argv = celery_argv(queue_list, concurrency, pool, "INFO")
        argv[argv.index("-A") + 1] = app
        argv[argv.index("-n") + 1] = f"bench-{uuid.uuid4().hex[:6]}@%h"
        argv.append("--without-heartbeat")
        proc = self.start(f"worker {','.join(queue_list)}", argv, env)
        wait_until(lambda: _alive_or_raise(proc) and "ready." in proc.output(), 60, f"worker {queue_list}")
        return proc


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _alive_or_raise(proc: Proc) -> bool:
    if proc.popen.poll() is not None:
        raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- figures ---------------------------------------------------------------------------------------------


def tree_rss(pids: Iterable[int], *, unique: bool = False) -> int:
    """Resident memory, in bytes, of these processes and all their descendants (each counted once).

    RSS counts pages a prefork child still shares with its parent once per process; ``unique=True``
    sums USS instead (pages only that process holds), the memory the tree really adds.
    """
    seen: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    seen[proc.pid] = proc.memory_full_info().uss if unique else proc.memory_info().rss
    return sum(seen.values())


def _role(proc: psutil.Process) -> str:
    """Which part of the stack a process is, from its command line (the CPU accounting's groups)."""
    if proc.pid == os.getpid():
        return "bench client"
    argv = proc.cmdline()
    line = " ".join(argv)
    if "-Q" in argv:
        return "worker " + argv[argv.index("-Q") + 1]
    if "gunicorn" in line:
        return "gunicorn"
    if "fake_provider" in line:
        return "fake provider"
    if proc.name().startswith(("postgres", "postmaster")):
        return "postgresql"
    if proc.name().startswith(("redis-server", "valkey")):
        return "redis"
    return "other"


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """Every process's role and CPU seconds (user + system) so far; two of them give ``cpu_by_role``."""
    snapshot: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            snapshot[proc.pid] = (_role(proc), times.user + times.system)
    return snapshot


def cpu_by_role(
    before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each role spent between two snapshots (a process started in between counts whole; one
    that ended in between is missed, so take both around a steady stretch)."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        earlier = before.get(pid)
        start = earlier[1] if earlier and earlier[0] == role else 0.0
        spent[role] = spent.get(role, 0.0) + max(0.0, seconds - start)
    return spent


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def fmt(self, digits: int = 0) -> str:
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load} (1, 5, 15 min)"


def command_line(module: str, argv: Sequence[str]) -> str:
    """How to run this benchmark again, exactly, from the repository root."""
    return shlex.join([".venv/bin/python", "-m", module, *argv])


def print_header(title: str, module: str, argv: Sequence[str]) -> None:
    print(f"\n=== {title} ===")
    print("command:", command_line(module, argv))
    print("machine:", machine())
    sys.stdout.flush()
