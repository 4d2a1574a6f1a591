"""Fixtures for tests that run the real thing: Celery worker processes on the session's Redis and database.

``start_worker(queues, concurrency=1, env=None)`` starts
``celery -A workers worker -Q <queues> --pool prefork -c N --without-mingle --without-gossip
--without-heartbeat -n <unique>@%h`` as a subprocess with the session environment (the test database and
Redis URLs exported by ``tests/conftest.py``) plus ``env`` overrides, waits until the worker logs that it
is ready, and returns a :class:`WorkerProcess`. Every worker a test started is stopped at teardown: SIGTERM
to its process group (warm shutdown), then SIGKILL to whatever is left, so no child outlives the test.

``wait_for(predicate, timeout=..., what=...)`` polls until the predicate returns something truthy and
returns it; the timeout only bounds a failure, it is never the assertion itself::

    def test_reply_is_sent(clean, start_worker, wait_for):
        start_worker(["inbound", "notify"], env={"WAPIPE_MODE": "menu"})
        ...
        row = wait_for(lambda: db.execute("SELECT ... WHERE status = 'sent'").fetchone(), what="sent")
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 60
T = TypeVar("T")


class WorkerProcess:
    """A running ``celery worker`` subprocess; its combined stdout/stderr is collected line by line."""

    def __init__(
        self, queues: list[str], concurrency: int, env: Mapping[str, str], pool: str = "prefork"
    ) -> None:
        self.queues = queues
        self.name = f"test-{'-'.join(queues)}-{uuid.uuid4().hex[:8]}"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "-Q",
            ",".join(queues),
            "--pool",
            pool,
            "-c",
            str(concurrency),
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-n",
            f"{self.name}@%h",
        ]
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own process group, so teardown can signal the pool's children too, and only them.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line.rstrip("\n"))
            if "ready." in line:  # Celery's "<name>@<host> ready." once it consumes
                self._ready.set()

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker {self.name} did not become ready:\n{self.output()}")
        return self

    def output(self) -> str:
        """Everything the worker (and its pool children) printed so far."""
        with self._lock:
            return "\n".join(self._lines)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def stop(self, timeout: float = 15) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL to the whole process group if it lingers."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # The main process may be gone while pool children linger: kill the group regardless.
        _signal_group(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._reader.join(timeout=5)

    def kill(self) -> None:
        """SIGKILL the worker and its children at once (a crash, for redelivery tests)."""
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@pytest.fixture
def start_worker(test_servers: dict[str, str], redis_client: Any) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``start_worker(["inbound", "notify"], concurrency=1, env={...}, pool="prefork")`` -> a
    ready worker, on a flushed broker (``redis_client``): jobs an earlier test left queued or scheduled
    would otherwise run against this test's rows, whose ids start again at 1."""
    started: list[WorkerProcess] = []

    def start(
        queues: Iterable[str] | str,
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
        pool: str = "prefork",
    ) -> WorkerProcess:
        queue_list = [queues] if isinstance(queues, str) else list(queues)
        full_env = {**os.environ, **test_servers, "PYTHONUNBUFFERED": "1", "WAPIPE_LOG_FORMAT": "json"}
        full_env.update(env or {})
        worker = WorkerProcess(queue_list, concurrency, full_env, pool)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


def wait_until(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what or 'a condition'}")
        time.sleep(interval)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """:func:`wait_until` as a fixture."""
    return wait_until
