"""The plumbing both embedded servers share: their processes, ports, logs and the error they raise.

The servers are detached, so a later command only knows them by the pid a file recorded. A pid file left
by a crash, an OOM kill or a reboot can name a recycled pid: another PostgreSQL, a ``psql`` or a
``tail -f server.log``, whose name looks like the server's. So a pid is trusted only when the process also
started when the server did (its start time, which a recycled pid cannot share) and, where the server
records it, runs in the server's folder; anything else is "not running" and is never signalled. Ports are
taken on 127.0.0.1, the previous run's port first so URLs stay the same from one run to the next.

A start time in epoch seconds is not enough on its own: the kernel keeps a process's start as clock ticks
since boot, and psutil adds the boot time, which it derives from the wall clock, so a clock step (NTP, a
VM resumed) moves every process's start time by as much. Where we record it, the start is kept as those
ticks plus the boot's id (``/proc/<pid>/stat`` field 22, ``/proc/sys/kernel/random/boot_id``, see
proc(5)), which no clock step changes and no other process of the same boot shares with the same pid.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
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


def boot_id() -> str | None:
    """This boot's random id (changes at each boot), None where the kernel does not offer it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (proc(5) field 22), None when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # Field 2, the command name in parentheses, may hold spaces and parentheses: split after the last ")".
    fields = stat.rpartition(")")[2].split()
    # fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


# The keys :func:`identity` may record; a server that is stopped has none of them (nor its pid).
IDENTITY_KEYS = ("started", "start_ticks", "boot_id")


def identity(proc: psutil.Process) -> dict[str, Any]:
    """What to record of a server we started to know it again: its start as ticks, boot id, and time."""
    recorded: dict[str, Any] = {"started": started_at(proc)}
    ticks, boot = start_ticks(proc.pid), boot_id()
    if ticks is not None and boot is not None:
        recorded.update(start_ticks=ticks, boot_id=boot)
    return recorded


def same_process(proc: psutil.Process, recorded: Mapping[str, Any]) -> bool:
    """Whether ``proc`` is the process ``recorded`` by :func:`identity` (its pid is the caller's check).

    Compared by start ticks and boot id where both were recorded and can be read now (immune to clock
    steps), else by start time to the second.
    """
    ticks, boot = recorded.get("start_ticks"), recorded.get("boot_id")
    if isinstance(ticks, int) and not isinstance(ticks, bool) and isinstance(boot, str):
        now_ticks, now_boot = start_ticks(proc.pid), boot_id()
        if now_ticks is not None and now_boot is not None:
            return now_ticks == ticks and now_boot == boot
    return started_near(proc, recorded.get("started"))


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
