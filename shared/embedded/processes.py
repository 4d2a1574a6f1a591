"""The plumbing both embedded servers share: their processes, ports, logs and the error they raise.

The servers are detached, so a later command only knows them by the pid a file recorded. A pid file left
by a crash, an OOM kill or a reboot can name a recycled pid: another PostgreSQL, a ``psql`` or a
``tail -f server.log``, whose name looks like the server's. So a pid is trusted only when the process also
started when the server did (its start time, which a recycled pid cannot share) and, where the server
records it, runs in the server's folder; anything else is "not running" and is never signalled. Ports are
taken on 127.0.0.1, the previous run's port first so URLs stay the same from one run to the next.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import psutil

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or stopped; the message says where its log is."""


# Start times are compared to the second: PostgreSQL records whole seconds, and the kernel's boot time that
# psutil adds to a process's start ticks can itself move by a second between two reads.
START_TIME_SLACK_SECONDS = 1.5


def live_process(pid: Any) -> psutil.Process | None:
    """The process ``pid`` if it exists and is not a zombie; who it is is for the caller to check."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc


def started_at(proc: psutil.Process) -> float | None:
    """When ``proc`` started (epoch seconds), None when it is gone or cannot be read."""
    try:
        return float(proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def started_near(proc: psutil.Process, recorded: Any) -> bool:
    """Whether ``proc`` started at the recorded time: the same pid and start time is the same process."""
    started = started_at(proc)
    if started is None or not isinstance(recorded, int | float) or isinstance(recorded, bool):
        return False
    return abs(started - float(recorded)) <= START_TIME_SLACK_SECONDS


def working_dir(proc: psutil.Process) -> Path | None:
    """The folder ``proc`` runs in, None when it is gone or cannot be read."""
    try:
        return Path(proc.cwd()).resolve()
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return None


def port_is_free(port: Any) -> bool:
    """Whether ``port`` is a port number nothing listens on at 127.0.0.1 (we can bind it).

    SO_REUSEADDR, as every server sets it: without it a connection of the previous run left in TIME_WAIT
    (gunicorn closes idle keepalive connections itself) would make the port look taken for a minute after
    a restart. Linux still refuses the bind while a socket listens on the port (127.0.0.1 or 0.0.0.0).
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: Any = None) -> int:
    """The previous run's port when it is still free (stable URLs), else one the kernel picks."""
    if port_is_free(preferred):
        return int(preferred)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate(proc: psutil.Process, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; whether the process is gone (False: we may not signal it).

    psutil refuses to signal a ``Process`` whose pid was recycled since it was looked up.
    """
    try:
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    except psutil.NoSuchProcess:
        return True
    except (psutil.AccessDenied, psutil.TimeoutExpired):
        return False
    return True


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
