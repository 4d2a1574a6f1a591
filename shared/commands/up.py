"""``wapipe up``: everything on this machine, supervised: ingress, a worker per queue group, beat.

With no ``WAPIPE_DATABASE_URL`` / ``WAPIPE_REDIS_URL`` it starts (or reuses) the embedded PostgreSQL and
Valkey under the data folder first; they keep running after ``wapipe up`` exits, until ``wapipe down``.

One ``wapipe up`` per data folder: it holds an exclusive ``flock`` on ``<data_dir>/up.lock`` for its whole
life, and "running" means that lock is held. The kernel drops the lock when the process dies however it
dies, so a kill -9 or a reboot leaves nothing to clean up and no pid to guess about; ``up.json`` only says
where the running one listens.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from shared import embedded
from shared.commands.arguments import add_data_dir, at_least_one, port_number
from shared.embedded.processes import port_is_free
from shared.settings import Settings
from shared.supervisor import ChildSpec, Supervisor

HELP = (
    "Run the ingress, the Celery workers for every queue and beat, supervised, on this machine. With no "
    "database/Redis URL set, embedded PostgreSQL and Valkey are started under the data folder (they keep "
    "running afterwards; `wapipe down` stops them)."
)
UP_FILE = "up.json"
LOCK_FILE = "up.lock"
# Held by `wapipe down` while it stops the servers (under the up lock), so a refused `up` can say why.
DOWN_LOCK_FILE = "down.lock"

# (queues, processes) per worker: a small footprint for a 2-core laptop. Fast queues share one pool;
# notify and status carry the outbound volume; the slow queues get prefetch 1 (see wapipe worker).
# (queues, pool size, pool). notify on threads: its batches wait on the provider, and a process of
# threads shares one event loop and one pacer among its batches (README, Performance: outbound).
WORKER_GROUPS: tuple[tuple[str, int, str], ...] = (
    ("inbound,verify,commands,flows", 2, "prefork"),
    ("notify,status", 4, "threads"),
    ("ai,persist,maintenance", 2, "prefork"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=port_number, default=8000, help="ingress port on 127.0.0.1 (default 8000)"
    )
    add_data_dir(parser)
    parser.add_argument(
        "--web-workers", type=at_least_one, default=2, help="gunicorn worker processes (default 2)"
    )


def _try_lock(path: Path) -> IO[str] | None:
    """``path`` opened and exclusively locked, or None when another process holds the lock."""
    handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the caller's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def up_lock(folder: Path) -> Iterator[bool]:
    """Hold this data folder's ``wapipe up`` lock for the block; yields False when another ``up`` has it.

    The file is never deleted (a process could lock a deleted file while another creates a new one), and
    it is opened close-on-exec, so the children and the detached servers do not keep it after we exit.
    """
    handle = _try_lock(folder / LOCK_FILE)
    try:
        yield handle is not None
    finally:
        if handle is not None:
            handle.close()  # releases the lock


@contextlib.contextmanager
def down_lock(folder: Path) -> Iterator[None]:
    """Held by ``wapipe down`` while it stops the servers (it holds the up lock too)."""
    handle = _try_lock(folder / DOWN_LOCK_FILE)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def down_in_progress(folder: Path) -> bool:
    """Whether a ``wapipe down`` is stopping this data folder's servers right now (its lock is held)."""
    if not (folder / DOWN_LOCK_FILE).exists():
        return False
    handle = _try_lock(folder / DOWN_LOCK_FILE)
    if handle is None:
        return True
    handle.close()
    return False


def up_is_running(folder: Path) -> bool:
    """Whether a ``wapipe up`` runs on this data folder: its lock is held (taken and released to test)."""
    if not (folder / LOCK_FILE).exists():
        return False
    with up_lock(folder) as acquired:
        return not acquired


def running_up(folder: Path) -> dict[str, object] | None:
    """What the live ``wapipe up`` on this data folder recorded (its pid, local and public URLs).

    None when none runs; empty while it is still starting (before its migrations are applied).
    """
    if not up_is_running(folder):
        return None
    try:
        info = json.loads((folder / UP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def child_specs(port: int, web_workers: int) -> list[ChildSpec]:
    cli = [sys.executable, "-m", "shared.cli"]
    specs = [ChildSpec("web", [*cli, "web", "--port", str(port), "--workers", str(web_workers)])]
    for queues, size, pool in WORKER_GROUPS:
        argv = [*cli, "worker", "-Q", queues, "--concurrency", str(size), "--pool", pool]
        specs.append(ChildSpec(f"worker {queues}", argv))
    specs.append(ChildSpec("beat", [*cli, "beat"]))
    return specs


def command_name() -> str:
    """How to type ``wapipe`` here: the bare name when it is on PATH, else this venv's script."""
    script = Path(sys.executable).parent / "wapipe"
    found = shutil.which("wapipe")
    if found and Path(found).resolve() == script.resolve():
        return "wapipe"
    return str(script) if script.exists() else "wapipe"


def banner(local_url: str, folder: Path, settings: Settings, *, custom_dir: bool, embedded_used: bool) -> str:
    """What is running and what to try next."""
    console = settings.active_provider.value == "console"
    prog = command_name()
    lines = [
        "",
        f"wapipe is running at {local_url}  (health: {local_url}/healthz, metrics: {local_url}/metrics)",
        f"  provider: {settings.active_provider.value}"
        + (" (outbound messages are printed here instead of sent)" if console else ""),
        f"  mode: {settings.mode.value}, data folder: {folder}",
        "",
        "Try it, in another terminal:",
    ]
    if custom_dir:
        # Every other command finds this run's servers through the same data folder.
        lines.append(f"  export WAPIPE_DATA_DIR={folder}")
    lines += [
        f"  {prog} seed-demo                  # a demo user and projects, +15551234567 linked to it",
        f"  {prog} chat --from +15551234567   # talk to the bot as that WhatsApp user",
        "",
        "Ctrl-C stops wapipe."
        + (" The embedded servers keep running; `wapipe down` stops them." if embedded_used else ""),
        "",
    ]
    return "\n".join(lines)


def watch_embedded(folder: Path, *, postgres: bool, redis: bool) -> Callable[[], dict[str, str]]:
    """What the supervisor calls every few seconds: start again an embedded server that died under us.

    Without it a Valkey killed (OOM, kill -9) stays dead and every worker and /readyz fail until someone
    restarts ``wapipe up``. Started again on its data (Valkey replays its append-only file, PostgreSQL
    its WAL), so the work they acknowledged comes back. Returns the URL variables that changed (the old
    port was taken meanwhile), for the supervisor to restart the children with.
    """
    last_error = ""
    said_gone: set[tuple[str, int]] = set()

    def gone(name: str, pid: int) -> None:
        if (name, pid) in said_gone:  # a start being retried (its log says why): said once
            return
        said_gone.add((name, pid))
        print(
            f"wapipe up: the embedded {name} (pid {pid}) has stopped; starting it again",
            file=sys.stderr,
            flush=True,
        )

    def watch() -> dict[str, str]:
        nonlocal last_error
        try:
            revived = embedded.revive(folder, postgres=postgres, redis=redis, on_gone=gone)
        except embedded.EmbeddedError as exc:
            if str(exc) != last_error:  # said once, not every few seconds while it keeps failing
                print(f"wapipe up: could not start it again, retrying: {exc}", file=sys.stderr, flush=True)
            last_error = str(exc)
            return {}
        last_error = ""
        if not revived:
            return {}
        servers = embedded.discover(folder)
        verb = "are" if len(revived) > 1 else "is"
        print(
            f"wapipe up: the embedded {' and '.join(revived)} {verb} running again",
            file=sys.stderr,
            flush=True,
        )
        changed: dict[str, str] = {}
        for name, url in (
            (embedded.DATABASE_URL_VAR, servers.database_url),
            (embedded.REDIS_URL_VAR, servers.redis_url),
        ):
            if url and name not in embedded.explicit_urls() and os.environ.get(name) != url:
                os.environ[name] = url
                changed[name] = url
        return changed

    return watch


def broker_unreachable(url: str) -> str | None:
    """Why Redis at ``url`` cannot be used (the error's type: its text names the server), None when it
    answers."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5).ping()
    except redis.RedisError as exc:
        return type(exc).__name__
    return None


def run(args: argparse.Namespace) -> int:
    folder = embedded.resolve_data_dir(args.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[embedded.DATA_DIR_VAR] = str(folder)
    with up_lock(folder) as acquired:
        if not acquired:
            if down_in_progress(folder):
                print(
                    f"wapipe up: a `wapipe down` is stopping the servers of {folder}; run wapipe up again "
                    "once it has finished",
                    file=sys.stderr,
                )
                return 1
            other = running_up(folder) or {}
            where = f" (pid {other['pid']}, {other.get('url')})" if "pid" in other else ""
            print(f"wapipe up: already running for {folder}{where}", file=sys.stderr)
            return 1
        return _run_locked(args, folder)


def _run_locked(args: argparse.Namespace, folder: Path) -> int:
    from shared.commands.web import check_gunicorn_environment
    from shared.db.migrate import migrate
    from shared.settings import get_settings

    # Checked before anything starts: the web process would refuse it at each of its restarts.
    check_gunicorn_environment()
    if not port_is_free(args.port):
        print(
            f"wapipe up: port {args.port} on 127.0.0.1 is taken; choose another with --port", file=sys.stderr
        )
        return 1

    explicit = embedded.explicit_urls()
    want_pg = embedded.DATABASE_URL_VAR not in explicit
    want_redis = embedded.REDIS_URL_VAR not in explicit
    if want_pg or want_redis:
        print(f"wapipe up: embedded servers in {folder} ...", flush=True)
        try:
            servers = embedded.start(folder, postgres=want_pg, redis=want_redis)
        except embedded.EmbeddedError as exc:
            print(f"wapipe up: {exc}", file=sys.stderr)
            return 1
        if want_pg and servers.database_url:
            os.environ[embedded.DATABASE_URL_VAR] = servers.database_url
        if want_redis and servers.redis_url:
            os.environ[embedded.REDIS_URL_VAR] = servers.redis_url
    local_url = f"http://127.0.0.1:{args.port}"
    os.environ.setdefault("WAPIPE_PUBLIC_URL", local_url)
    if not os.environ.get("TWILIO_AUTH_TOKEN"):
        # Webhooks are always signed, even on a laptop: `wapipe chat` signs with this dev token.
        try:
            os.environ["TWILIO_AUTH_TOKEN"] = embedded.secret(folder, "twilio_auth_token")
        except embedded.EmbeddedError as exc:
            print(f"wapipe up: {exc}", file=sys.stderr)
            return 1
    get_settings.cache_clear()
    settings = get_settings()  # a bad setting stops us here, naming the variable

    # The database is checked by the migrations below; the broker is checked here, or every process would
    # start on a Redis it cannot reach.
    unreachable = broker_unreachable(settings.redis_url or "")
    if unreachable is not None:
        print(
            f"wapipe up: Redis could not be reached ({unreachable}); check that it runs at"
            " WAPIPE_REDIS_URL with the given password",
            file=sys.stderr,
        )
        return 1
    applied = migrate(settings.database_url or "")
    print(
        f"wapipe up: migrations {'applied: ' + ', '.join(applied) if applied else 'up to date'}", flush=True
    )

    up_file = folder / UP_FILE
    up_file.write_text(
        json.dumps({"pid": os.getpid(), "url": local_url, "public_url": settings.public_url}),
        encoding="utf-8",
    )
    print(
        banner(
            local_url,
            folder,
            settings,
            custom_dir=args.data_dir is not None,
            embedded_used=want_pg or want_redis,
        )
    )
    try:
        watch = watch_embedded(folder, postgres=want_pg, redis=want_redis) if want_pg or want_redis else None
        return Supervisor(child_specs(args.port, args.web_workers), os.environ, watch=watch).run()
    finally:
        up_file.unlink(missing_ok=True)
