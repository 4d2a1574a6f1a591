"""The plumbing both embedded servers share: their processes, ports, logs and the error they raise.

The servers are detached, so a later command only knows them by the pid a file recorded. That pid is
trusted only while the process behind it still looks like the server (a stale pid file can point at an
unrelated process once the pid is recycled). Ports are taken on 127.0.0.1, the previous run's port first
so URLs stay the same from one run to the next.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import psutil

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or stopped; the message says where its log is."""


def find_process(pid: Any, name_part: str) -> psutil.Process | None:
    """The live process ``pid`` if it is what we expect (its name or command line has ``name_part``).

    Checking the name guards against a recycled pid: a stale pid file can point at an unrelated process.
    """
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if name_part in proc.name() or any(name_part in part for part in proc.cmdline()):
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return None


def port_is_free(port: Any) -> bool:
    """Whether ``port`` is a port number nothing listens on at 127.0.0.1 (we can bind it)."""
    if not isinstance(port, int) or not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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


def terminate(proc: psutil.Process, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
