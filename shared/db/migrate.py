"""Apply ``shared/db/migrations/NNNN_name.sql`` (or ``.py``) in order, each once, each in its own transaction.

A ``.py`` migration is for a change of data that only our own code can decide row by row (0011: which
stored phone numbers ``shared.phone`` now writes another way); its ``migrate(conn)`` runs in the
migration's transaction, under the same lock rules as SQL.

Two processes starting together (``wapipe up`` and a ``wapipe migrate``, or several web replicas) are
serialised by a session-level advisory lock, so each file runs exactly once.

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
# Any fixed 64-bit number, unique to this purpose: "wapipe" in ASCII.
_LOCK_KEY = 0x776170697065
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
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in available(directory):
                if migration.version in done:
                    continue
                _apply(conn, migration)
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    """Run one migration in its own transaction, waiting at most LOCK_TIMEOUT per lock, tried again while
    a lock is not to be had."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                migration.run(conn)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
            return
        except errors.LockNotAvailable:
            if attempt == ATTEMPTS:
                raise RuntimeError(
                    f"migration {migration.version}: a table it changes stayed locked through {ATTEMPTS}"
                    f" tries of {LOCK_TIMEOUT} (a long transaction? see pg_stat_activity)"
                ) from None
            time.sleep(RETRY_PAUSE_SECONDS)
