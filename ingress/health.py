"""Liveness and readiness for load balancers and orchestrators.

``/healthz`` answers while the process can serve at all (no I/O, so a slow database never gets a healthy
web process restarted). ``/readyz`` answers 200 while Redis responds: the webhooks, what an instance is
for, need only Redis (events are queued, and the workers retry through a PostgreSQL outage), so an
outage of PostgreSQL alone must not take every replica out of the load balancer, where providers' webhooks
would be refused and lost (Twilio retries a 5xx for 15 s at most). With PostgreSQL down the answer is
still 200, with ``"status": "degraded"`` and the PostgreSQL check's result; with Redis down it is 503
(``"unavailable"``). Either way ``checks`` says what each server answered, each check bounded in time.

``/readyz`` needs no API key, so a failed check says only the error's type
(``unreachable: OperationalError``): the driver's text names internal hosts, ports and databases. (A
malformed URL, whose error would quote the password, is refused at start by shared/settings.py.) For the
same reason anyone can loop on it, and each check opens a PostgreSQL connection: each process runs one
check at a time and answers with its result for :data:`READY_MAX_AGE_SECONDS` (see :class:`_LastCheck`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from flask import Blueprint, jsonify

from ingress.per_app import per_app
from ingress.state import current_publisher, current_settings
from shared.logging import get_logger

log = get_logger(__name__)

bp = Blueprint("health", __name__)

CHECK_TIMEOUT_SECONDS = 2
# How long a process answers /readyz with its last check's result. Each check opens a PostgreSQL
# connection (a backend process and a login) and anyone may call /readyz: reused for a second, a probe
# loop costs PostgreSQL at most one connection a second per web process instead of one per call (which
# ran past max_connections and starved the workers and the API), while a load balancer probing every few
# seconds still sees every change.
READY_MAX_AGE_SECONDS = 1.0
LAST_CHECK_KEY = "wapipe.readyz_last_check"


@dataclass(frozen=True)
class _Readiness:
    status: str
    code: int
    checks: dict[str, str]


class _LastCheck:
    """The latest readiness check of one process, and the lock that lets one check run at a time.

    A caller arriving while a check runs gets the previous result, not a wait: the check may wait up to
    its bound on each server, and callers queued behind it would hold request threads webhooks need.
    Only callers with no previous result to give wait for the running check.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The result and when it was made, in one attribute so a reader never pairs one with another's time.
        self._last: tuple[_Readiness, float] | None = None

    def get(self, check: Callable[[], _Readiness]) -> _Readiness:
        last = self._last
        if last is not None and time.monotonic() - last[1] < READY_MAX_AGE_SECONDS:
            return last[0]
        if last is None:
            self._lock.acquire()
        elif not self._lock.acquire(blocking=False):
            return last[0]
        try:
            # Another caller's check may have finished while this one waited for the lock.
            latest = self._last
            if latest is not None and time.monotonic() - latest[1] < READY_MAX_AGE_SECONDS:
                return latest[0]
            result = check()
            self._last = (result, time.monotonic())
            return result
        finally:
            self._lock.release()


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    readiness = per_app(LAST_CHECK_KEY, _LastCheck).get(_check)
    response = jsonify({"status": readiness.status, "checks": readiness.checks})
    response.status_code = readiness.code
    return response


def _check() -> _Readiness:
    checks = {"postgres": _check_postgres(), "redis": _check_redis()}
    # Logged here, once per check: the probes answered from its result would repeat the same line.
    if checks["redis"] != "ok":
        log.warning("ingress.not_ready", **checks)
        return _Readiness("unavailable", 503, checks)
    if checks["postgres"] != "ok":
        # Still ready for webhooks; the API's database calls answer 503 until PostgreSQL is back.
        log.warning("ingress.degraded", **checks)
        return _Readiness("degraded", 200, checks)
    return _Readiness("ready", 200, checks)


def _check_postgres() -> str:
    url = current_settings().database_url
    if not url:
        return "not configured: WAPIPE_DATABASE_URL is not set"
    timed_out = threading.Event()
    try:
        # A connection of its own with a short timeout: the pool could make us wait for a busy slot.
        with (
            psycopg.connect(url, connect_timeout=CHECK_TIMEOUT_SECONDS, autocommit=True) as conn,
            _bounded(conn, timed_out),
        ):
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return "unreachable: timed out" if timed_out.is_set() else _unreachable(exc)
    return "ok"


@contextlib.contextmanager
def _bounded(conn: psycopg.Connection, timed_out: threading.Event) -> Iterator[None]:
    """Break ``conn`` off if the block still waits on it after CHECK_TIMEOUT_SECONDS.

    connect_timeout bounds only the login. Behind PgBouncer with PostgreSQL down or saturated the login
    succeeds and the query waits for a server connection (up to query_wait_timeout, 120 s), and gunicorn's
    timeout does not stop a request thread: probes would pile up until webhooks found no thread. Neither
    a cancel request nor a statement_timeout helps there (the query never reached PostgreSQL), so the
    socket is shut down under the waiting driver, which then fails at once. Shut down through a duplicate
    of the descriptor: it stays ours however late the timer fires, so it can never hit a reused number.
    """
    sock = socket.socket(fileno=os.dup(conn.fileno()))

    def cut() -> None:
        timed_out.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(CHECK_TIMEOUT_SECONDS, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        sock.close()


def _check_redis() -> str:
    publisher = current_publisher()
    if publisher is None:
        return "not configured: WAPIPE_REDIS_URL is not set"
    try:
        publisher.redis.ping()
    except redis.RedisError as exc:
        return _unreachable(exc)
    return "ok"


def _unreachable(exc: Exception) -> str:
    # The type only, in the answer and in the log (scrubbing the text cannot know every secret in it);
    # the operator reproduces the details with the same URL from inside the network.
    return f"unreachable: {type(exc).__name__}"
