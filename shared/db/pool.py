"""One psycopg-pool pool per process, made on first use (after a prefork worker has forked)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from shared.db.errors import unavailable
from shared.settings import SettingsError, get_settings

_lock = threading.Lock()
_pool: ConnectionPool | None = None
_pool_pid: int | None = None

# A connection handed back this recently is taken as alive: pinging on every checkout cost a round trip
# per transaction, on every stage. One idle for longer is pinged first, so a PostgreSQL restart during a
# quiet spell costs nothing; one that died within the last seconds fails its first statement instead,
# which raises Unavailable (retried by every task, a 503 at the API) and is discarded by the pool.
CHECK_AFTER_IDLE_SECONDS = 2.0
_returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


def _check_if_idle(conn: psycopg.Connection) -> None:
    if time.monotonic() - _returned_at.get(conn, 0.0) > CHECK_AFTER_IDLE_SECONDS:
        ConnectionPool.check_connection(conn)


def _note_returned(conn: psycopg.Connection) -> None:
    _returned_at[conn] = time.monotonic()


# No statement of ours on the hot paths runs long (batches are bounded, scans indexed); one that does is
# waiting on a lock or a stalled server, and holds its caller (and, through the API's group commit, every
# request sharing its statement) for as long. Cancelled after WAPIPE_DB_STATEMENT_TIMEOUT (20 s) it raises
# TimedOut, an Unavailable: a task retries, the API answers 503, under gunicorn's 30 s request
# timeout. Set once per connection as the pool opens it; the few reads that may take longer on a big
# database (the stats aggregates) raise it for their own transaction.
# TCP keepalives, unless the URL sets its own: a connection to a server that vanished (a failover, a
# dropped route) is found dead in about a minute, not after the kernel's two hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _configure(conn: psycopg.Connection) -> None:
    milliseconds = int(get_settings().db_statement_timeout_seconds * 1000)
    if milliseconds:
        conn.execute(f"SET statement_timeout = {milliseconds}")
        conn.commit()


def _connect_kwargs(url: str) -> dict[str, object]:
    given = conninfo_to_dict(url)
    return {"row_factory": dict_row, **{key: value for key, value in KEEPALIVES.items() if key not in given}}


def database_url() -> str:
    url = get_settings().database_url
    if not url:
        # A SettingsError, which the CLI says in one line: a newcomer's `wapipe seed-demo` with no
        # `wapipe up` running met a RuntimeError's traceback.
        raise SettingsError(
            "WAPIPE_DATABASE_URL is not set and no embedded database was found: "
            "start `wapipe up`, or set WAPIPE_DATABASE_URL"
        )
    return url


def get_pool() -> ConnectionPool:
    """The process's pool; a forked child gets its own instead of sharing the parent's sockets."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ConnectionPool(
                database_url(),
                min_size=1,
                max_size=get_settings().db_pool_size,
                kwargs=_connect_kwargs(database_url()),
                configure=_configure,
                # A connection killed by a PostgreSQL restart is detected and replaced on checkout.
                check=_check_if_idle,
                reset=_note_returned,
                timeout=get_settings().db_pool_timeout_seconds,
                open=True,
                name="wapipe",
            )
            _pool_pid = os.getpid()
        return _pool


def close_pool(timeout: float = 5.0) -> None:
    """Close this process's pool, waiting up to ``timeout`` seconds for its connection attempts to end."""
    global _pool
    with _lock:
        if _pool is not None and _pool_pid == os.getpid():
            _pool.close(timeout=timeout)
        _pool = None


@contextlib.contextmanager
def connection() -> Iterator[psycopg.Connection]:
    """A pooled connection; a block that raises rolls back, one that returns commits.

    PostgreSQL unreachable anywhere here (no connection within the pool's timeout, or the server going
    away mid-block or at COMMIT, as during a restart) raises :class:`Unavailable`, which tasks retry.
    """
    try:
        with get_pool().connection() as conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise unavailable(exc) from exc


@contextlib.contextmanager
def transaction() -> Iterator[psycopg.Connection]:
    """A pooled connection inside one transaction, committed when the block ends without error."""
    with connection() as conn, conn.transaction():
        yield conn


@contextlib.contextmanager
def autocommit(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """``conn`` in autocommit for the block: each statement commits on its own, with no BEGIN and COMMIT
    round trips, for work that is one statement (atomic by itself). Put back in the pool's usual
    transactional mode afterwards, as psycopg_pool's own connection check does."""
    conn.autocommit = True
    try:
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):  # only on a broken connection, which the pool replaces
            conn.autocommit = False


@contextlib.contextmanager
def autocommit_connection() -> Iterator[psycopg.Connection]:
    """A pooled connection in :func:`autocommit` mode (errors as :func:`connection`)."""
    with connection() as conn, autocommit(conn):
        yield conn
