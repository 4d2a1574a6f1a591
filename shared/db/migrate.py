"""Apply ``shared/db/migrations/NNNN_name.sql`` (or ``.py``) in order, each once, each in its own transaction.

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
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import errors

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any fixed 64-bit number, unique to this purpose: "wapipe" and "m" in ASCII. Not the "wapipe" that
# earlier releases took as a session lock, which one of them may have left held on a pooled connection.
_LOCK_KEY = 0x7761706970656D
_TAKE_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_IS_APPLIED = "SELECT 1 FROM schema_migrations WHERE version = %s"
LOCK_TIMEOUT = "5s"
ATTEMPTS = 20
RETRY_PAUSE_SECONDS = 1.0


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

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
    """Run one migration in its own transaction, waiting at most LOCK_TIMEOUT per lock, tried again while
    a lock is not to be had; False when another process applied it first."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with conn.transaction():
                # Before lock_timeout is set: another process's migration may rightly take longer than it.
                conn.execute(_TAKE_LOCK, (_LOCK_KEY,))
                if conn.execute(_IS_APPLIED, (migration.version,)).fetchone() is not None:
                    return False
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                migration.run(conn)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
            return True
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
