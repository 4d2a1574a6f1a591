"""Apply ``shared/db/migrations/NNNN_name.sql`` in order, each once, each in its own transaction.

Two processes starting together (``wapipe up`` and a ``wapipe migrate``, or several web replicas) are
serialised by a session-level advisory lock, so each file runs exactly once.

A migration waits at most :data:`LOCK_TIMEOUT` for each table lock it needs, then is rolled back and
tried again a moment later (up to :data:`ATTEMPTS` times). Against a live pipeline that matters: an
``ALTER TABLE messages`` queued behind a long transaction would hold every later query on ``messages``
behind it, stopping the workers and the ingress's reads for as long as that transaction lasts; failing
fast lets them through between attempts.
"""

from __future__ import annotations

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

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def available(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return [Migration(path.stem, path) for path in sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))]


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
                conn.execute(migration.sql)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
            return
        except errors.LockNotAvailable:
            if attempt == ATTEMPTS:
                raise RuntimeError(
                    f"migration {migration.version}: a table it changes stayed locked through {ATTEMPTS}"
                    f" tries of {LOCK_TIMEOUT} (a long transaction? see pg_stat_activity)"
                ) from None
            time.sleep(RETRY_PAUSE_SECONDS)
