"""Apply ``shared/db/migrations/NNNN_name.sql`` (or ``.py``) in order, each once, each in its own transaction
(or, for a file marked so, outside any: see the end).

A ``.py`` migration is for a change of data that only our own code can decide row by row (0011: which
stored phone numbers ``shared.phone`` now writes another way); its ``migrate(conn)`` runs in the
migration's transaction, under the same lock rules as SQL.

Two processes starting together (``wapipe up`` and a ``wapipe migrate``, or several web replicas) are
serialised by a transaction-level advisory lock: each migration's transaction takes it first, then looks
again whether the migration is applied (another process may have applied it while this one waited), so
each file runs exactly once. Transaction-level because behind PgBouncer in transaction pooling (which
deploy/README.md supports) a connection is one server connection only for the length of a transaction: a
session lock and its unlock could run on two server connections, leaving concurrent runs unserialised and
the lock held on a pooled connection, where the next release's migrations waited for it for ever.

A migration waits at most :data:`LOCK_TIMEOUT` for each table lock it needs, then is rolled back and
tried again a moment later (up to :data:`ATTEMPTS` times). Against a live pipeline that matters: an
``ALTER TABLE messages`` queued behind a long transaction would hold every later query on ``messages``
behind it, stopping the workers and the ingress's reads for as long as that transaction lasts; failing
fast lets them through between attempts.

A ``.sql`` file whose first line is ``-- wapipe: no-transaction`` runs outside a transaction, one
statement at a time: the way to ``CREATE INDEX CONCURRENTLY`` (and ``DROP INDEX CONCURRENTLY``), which
PostgreSQL refuses inside one, so that an index on a big table is built without blocking its writes
(as Django's ``atomic = False``, Rails' ``disable_ddl_transaction!``). Such a file holds only statements
that can run outside a transaction, and each must be safe to run again: a failure part way leaves the
statements before it done, and the next run starts the file from its first statement. Each ``CREATE
INDEX`` in it must read ``CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS <name>``. The migration is
recorded only once its last statement has succeeded.

- Serialised by a session-level advisory lock of that migration's own (a transaction-level one would end
  with its first statement), taken and released around the migration alone; the transactional migrations
  keep theirs. A process waiting for it polls ``pg_try_advisory_lock`` rather than block in
  ``pg_advisory_lock``: a statement waiting there holds a snapshot, and ``CREATE INDEX CONCURRENTLY``
  waits for every snapshot older than its own, so the builder and the waiter would deadlock.
- A concurrent build that failed or was killed leaves its index INVALID (unused, yet still written on
  every insert), and ``IF NOT EXISTS`` would then skip it for good: before each ``CREATE INDEX`` the
  runner drops (``DROP INDEX CONCURRENTLY``) an invalid index of the name it creates, so the build
  starts again.
- No ``lock_timeout`` and no ``statement_timeout`` (the role's, say) apply to its statements. A concurrent
  build holds no lock that stops reads or writes, but waits for every transaction older than it, and
  builds for as long as the table takes: a timeout would only leave an invalid index behind. So
  ``wapipe migrate`` waits while a long transaction runs (see ``pg_stat_activity``).
- Behind PgBouncer in transaction pooling a session lock does not hold (its statements may reach other
  server connections): point ``wapipe migrate`` at PostgreSQL itself, or at a session-pooled port, for a
  release with such a migration. Before each statement the runner checks that it is still on its lock's
  server connection, and stops when it is not.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import errors, sql

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any fixed 64-bit number, unique to this purpose: "wapipe" and "m" in ASCII. Not the "wapipe" that
# earlier releases took as a session lock, which one of them may have left held on a pooled connection.
_LOCK_KEY = 0x7761706970656D
_TAKE_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_IS_APPLIED = "SELECT 1 FROM schema_migrations WHERE version = %s"
LOCK_TIMEOUT = "5s"
ATTEMPTS = 20
RETRY_PAUSE_SECONDS = 1.0
NO_TRANSACTION_MARKER = "-- wapipe: no-transaction"
# A no-transaction migration's session lock: this class with the migration's number, in the two-key space,
# which no transaction-level lock above shares. Its own per migration, so one left held on a pooled
# server connection could hold up only that migration, never a later release's.
_SESSION_LOCK_CLASS = 0x77617069  # "wapi"
_TRY_SESSION_LOCK = "SELECT pg_try_advisory_lock(%s, %s), pg_backend_pid()"
_SESSION_UNLOCK = "SELECT pg_advisory_unlock(%s, %s)"
SESSION_LOCK_POLL_SECONDS = 0.2
_INVALID_INDEX = """
SELECT n.nspname, c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indexrelid = to_regclass(%s) AND NOT i.indisvalid
"""
# One lexical piece of SQL: a comment, a quoted string or identifier, a statement's end, anything else.
_SQL_PIECE = re.compile(
    r"""--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|"(?:[^"]|"")*"|;|\$|[^-/'";$]+|[-/]""", re.DOTALL
)
_NAME = r'(?:"(?:[^"]|"")+"|[\w$]+)(?:\.(?:"(?:[^"]|"")+"|[\w$]+))?'
_CREATE_INDEX = re.compile(r"\s*CREATE\s+(?:UNIQUE\s+)?INDEX\b", re.IGNORECASE)
_CREATE_INDEX_CONCURRENTLY = re.compile(
    rf"\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+({_NAME})\s+ON\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def transactional(self) -> bool:
        if self.path.suffix != ".sql":
            return True
        with self.path.open(encoding="utf-8") as file:
            return file.readline().strip() != NO_TRANSACTION_MARKER

    def statements(self) -> list[str]:
        """A no-transaction file's statements, each to run on its own, comments left out."""
        statements, current = [], []
        for piece in _SQL_PIECE.findall(self.path.read_text(encoding="utf-8")):
            if piece == "$":
                # Dollar quoting would need a real parser; DO blocks and functions belong in a transaction.
                raise ValueError(f"migration {self.version}: no dollar quoting in a no-transaction file")
            if piece == ";":
                statements.append("".join(current).strip())
                current = []
            elif not piece.startswith(("--", "/*")):
                current.append(piece)
        statements.append("".join(current).strip())
        found = [statement for statement in statements if statement]
        for statement in found:
            if _CREATE_INDEX.match(statement) and not _CREATE_INDEX_CONCURRENTLY.match(statement):
                raise ValueError(
                    f"migration {self.version}: a no-transaction file's CREATE INDEX must read"
                    " CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS <name> ON ..."
                )
        return found

    def run(self, conn: psycopg.Connection) -> None:
        if self.path.suffix == ".py":
            spec = importlib.util.spec_from_file_location(f"wapipe_migration_{self.version}", self.path)
            assert spec is not None
            assert spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.migrate(conn)
        else:
            conn.execute(self.path.read_text(encoding="utf-8"))


def available(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    paths = [path for path in directory.glob("[0-9][0-9][0-9][0-9]_*") if path.suffix in (".sql", ".py")]
    return [Migration(path.stem, path) for path in sorted(paths)]


def migrate(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is not yet applied; return the versions applied now (empty when up to date)."""
    applied_now: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        # Under the lock: two processes creating it at once could both find it missing, and one fail.
        with conn.transaction():
            conn.execute(_TAKE_LOCK, (_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        # Read without the lock, so only a hint: each migration looks again under it.
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for migration in available(directory):
            if migration.version not in done and _apply(conn, migration):
                applied_now.append(migration.version)
    return applied_now


def _apply(conn: psycopg.Connection, migration: Migration) -> bool:
    """Run one migration, waiting at most LOCK_TIMEOUT per lock when in a transaction, tried again while a
    lock is not to be had; False when another process applied it first."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if migration.transactional:
                return _apply_in_transaction(conn, migration)
            return _apply_outside_transaction(conn, migration)
        except (errors.LockNotAvailable, errors.DeadlockDetected):
            # A deadlock with a live worker's statement (a migration locking tables it shares) is rolled
            # back whole like a lock wait that ran out: tried again a moment later.
            if attempt == ATTEMPTS:
                raise RuntimeError(
                    f"migration {migration.version}: a table it changes stayed locked through {ATTEMPTS}"
                    f" tries of {LOCK_TIMEOUT} (a long transaction? see pg_stat_activity)"
                ) from None
            time.sleep(RETRY_PAUSE_SECONDS)
        except psycopg.Error as exc:
            exc.add_note(f"migration {migration.version}")  # `wapipe migrate` says which one failed
            raise


def _apply_in_transaction(conn: psycopg.Connection, migration: Migration) -> bool:
    with conn.transaction():
        # Before lock_timeout is set: another process's migration may rightly take longer than it.
        conn.execute(_TAKE_LOCK, (_LOCK_KEY,))
        if conn.execute(_IS_APPLIED, (migration.version,)).fetchone() is not None:
            return False
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        migration.run(conn)
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
    return True


def _apply_outside_transaction(conn: psycopg.Connection, migration: Migration) -> bool:
    statements = migration.statements()  # a file it would refuse stops before its lock is taken
    with _session_lock(conn, migration) as backend_pid:
        if conn.execute(_IS_APPLIED, (migration.version,)).fetchone() is not None:
            return False
        with _without_timeouts(conn):
            for statement in statements:
                _require_session(conn, backend_pid, migration)
                _drop_if_invalid(conn, statement)
                conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
    return True


@contextlib.contextmanager
def _session_lock(conn: psycopg.Connection, migration: Migration) -> Iterator[int]:
    """Hold the migration's session lock (polled for, see the module's docstring); the backend's pid."""
    key = (_SESSION_LOCK_CLASS, int(migration.version.split("_", 1)[0]))
    while True:
        row = conn.execute(_TRY_SESSION_LOCK, key).fetchone()
        assert row is not None
        if row[0]:
            break
        time.sleep(SESSION_LOCK_POLL_SECONDS)
    try:
        yield row[1]
    finally:
        if not conn.broken:  # a lost connection's session, and with it the lock, is gone
            conn.execute(_SESSION_UNLOCK, key)


@contextlib.contextmanager
def _without_timeouts(conn: psycopg.Connection) -> Iterator[None]:
    conn.execute("SET lock_timeout = 0")
    conn.execute("SET statement_timeout = 0")
    try:
        yield
    finally:
        if not conn.broken:
            conn.execute("RESET lock_timeout")
            conn.execute("RESET statement_timeout")


def _require_session(conn: psycopg.Connection, backend_pid: int, migration: Migration) -> None:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if row is None or row[0] != backend_pid:
        raise RuntimeError(
            f"migration {migration.version} runs outside a transaction and needs one server connection"
            " throughout, but its statements reached another (PgBouncer in transaction pooling?): run"
            " `wapipe migrate` against PostgreSQL itself or a session-pooled port. Its lock may stay held"
            f" by backend {backend_pid} (pg_locks, advisory); end it with pg_terminate_backend."
        )


def _drop_if_invalid(conn: psycopg.Connection, statement: str) -> None:
    """Drop the invalid index an earlier, failed build of this statement's index left behind."""
    creating = _CREATE_INDEX_CONCURRENTLY.match(statement)
    if creating is None:
        return
    row = conn.execute(_INVALID_INDEX, (creating.group(1),)).fetchone()
    if row is not None:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(*row)))
