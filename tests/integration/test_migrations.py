"""Migrations apply each file once, re-apply as a no-op, and are safe when two processes race."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.db import migrate as migrate_module
from shared.db.migrate import available, migrate
from tests.conftest import ADMIN_DATABASE_URL, _database_url


def _fresh_database() -> str:
    name = f"wapipe_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop(name: str) -> None:
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def copy_migrations(folder: Path, keep: Callable[[str], bool]) -> Path:
    """A folder holding the project's migrations whose version ``keep`` takes."""
    folder.mkdir()
    for migration in available():
        if keep(migration.version):
            shutil.copy(migration.path, folder)
    return folder


@contextlib.contextmanager
def migrated_before(version: str, tmp_path: Path) -> Iterator[tuple[psycopg.Connection, str]]:
    """A database of its own with every migration before ``version`` applied (what a release before it
    held), dropped after: a connection to it and its URL."""
    earlier = copy_migrations(tmp_path / "earlier", lambda each: each < version)
    name = _fresh_database()
    try:
        url = _database_url(name)
        migrate(url, earlier)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            yield conn, url
    finally:
        _drop(name)


def test_applies_every_migration_once_then_nothing() -> None:
    name = _fresh_database()
    try:
        url = _database_url(name)
        assert migrate(url) == [m.version for m in available()]
        assert migrate(url) == []
        with psycopg.connect(url) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == [m.version for m in available()]
    finally:
        _drop(name)


def test_two_processes_migrating_at_once_apply_each_file_once() -> None:
    name = _fresh_database()
    try:
        url = _database_url(name)
        code = "import sys; from shared.db.migrate import migrate; print(len(migrate(sys.argv[1])))"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        counts = [int(proc.communicate(timeout=60)[0].strip()) for proc in procs]
        assert all(proc.returncode == 0 for proc in procs)
        # Between them they applied every file once: each migration's transaction waits for the other's,
        # then finds what the other applied (which of them applies which file is the race's to decide).
        assert sum(counts) == len(available())
        with psycopg.connect(url) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == [m.version for m in available()]
    finally:
        _drop(name)


def test_schema_has_the_architecture_tables(db: psycopg.Connection) -> None:
    tables = {
        row["tablename"] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {
        "contacts",
        "user_links",
        "workspaces",
        "projects",
        "tasks",
        "conversations",
        "messages",
        "proposals",
        "proposal_items",
        "flow_records",
        "assistant_configs",
        "webhook_events",
        "dead_letters",
        "schema_migrations",
    } <= tables


def _with_a_new_migration(folder: Path, sql: str) -> Path:
    """The real migrations plus ``9999_probe.sql``."""
    folder.mkdir()
    for migration in available():
        shutil.copy(migration.path, folder)
    (folder / "9999_probe.sql").write_text(sql, encoding="utf-8")
    return folder


def test_a_migration_does_not_queue_behind_a_long_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Queued for its lock, an ALTER TABLE holds every later query on the table behind it: on a live
    # pipeline, every worker. It gives up the wait after lock_timeout and tries again instead.
    monkeypatch.setattr(migrate_module, "LOCK_TIMEOUT", "100ms")
    monkeypatch.setattr(migrate_module, "RETRY_PAUSE_SECONDS", 0.05)
    name = _fresh_database()
    try:
        url = _database_url(name)
        migrate(url)
        folder = _with_a_new_migration(tmp_path / "migrations", "ALTER TABLE messages ADD COLUMN probe int;")
        with psycopg.connect(url) as holder:
            holder.execute("SELECT count(*) FROM messages")  # a long transaction's lock on the table
            monkeypatch.setattr(migrate_module, "ATTEMPTS", 3)
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(migrate, url, folder)
                with pytest.raises(RuntimeError, match="stayed locked"):
                    waiting.result(timeout=30)

            monkeypatch.setattr(migrate_module, "ATTEMPTS", 200)
            with ThreadPoolExecutor(1) as pool:
                retrying = pool.submit(migrate, url, folder)
                with psycopg.connect(url, autocommit=True) as other:
                    # Meanwhile the table still answers (each try waits 100 ms at most, then steps aside).
                    assert other.execute("SELECT count(*) FROM messages").fetchone() == (0,)
                holder.rollback()  # the long transaction ends
                assert retrying.result(timeout=30) == ["9999_probe"]
    finally:
        _drop(name)


def test_many_runs_at_once_apply_each_migration_exactly_once(tmp_path: Path) -> None:
    # Each probe migration fails if it runs twice (a second CREATE TABLE) and records each run, so a run
    # that applied a migration another had applied meanwhile would fail or be counted. Each takes a moment,
    # so the later processes start while the first is still applying them.
    folder = tmp_path / "migrations"
    folder.mkdir()
    for migration in available():
        shutil.copy(migration.path, folder)
    probes = [f"9{index:03d}_probe" for index in range(8)]
    for probe in probes:
        (folder / f"{probe}.sql").write_text(
            f"SELECT pg_sleep(0.2); CREATE TABLE t_{probe} (); INSERT INTO probe_runs VALUES ('{probe}');",  # noqa: S608 - test's own names
            encoding="utf-8",
        )
    name = _fresh_database()
    try:
        url = _database_url(name)
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE probe_runs (version text NOT NULL)")
        code = (
            "import sys, pathlib; from shared.db.migrate import migrate;"
            " print(len(migrate(sys.argv[1], pathlib.Path(sys.argv[2]))))"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, url, str(folder)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        counts = [int(proc.communicate(timeout=60)[0].strip()) for proc in procs]
        assert all(proc.returncode == 0 for proc in procs)
        assert sum(counts) == len(probes)
        with psycopg.connect(url) as conn:
            runs = [row[0] for row in conn.execute("SELECT version FROM probe_runs ORDER BY 1")]
            applied = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert runs == probes
        assert applied == [m.version for m in available()] + probes
    finally:
        _drop(name)


def _lock_outside_a_transaction(monitor: psycopg.Connection, pid: int) -> tuple[bool, bool]:
    """(the backend was seen idle, it held an advisory lock while idle): read as state, locks, state again,
    with the state's change time unchanged between the two reads, so no transaction ran in between."""
    query = "SELECT state, state_change FROM pg_stat_activity WHERE pid = %s"
    before = monitor.execute(query, (pid,)).fetchone()
    locks = monitor.execute(
        "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND granted", (pid,)
    ).fetchone()[0]
    after = monitor.execute(query, (pid,)).fetchone()
    idle = before is not None and before == after and before[0] == "idle"
    return idle, idle and locks > 0


def test_no_lock_outlives_its_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Behind PgBouncer in transaction pooling a client's connection is a server connection only for the
    # length of a transaction: a lock held past it stays on a server connection other clients get (and is
    # never released there). So the migrator holds its lock only inside its transactions: while it waits
    # between two tries of a migration that cannot have its table lock, it holds none.
    monkeypatch.setattr(migrate_module, "LOCK_TIMEOUT", "50ms")
    monkeypatch.setattr(migrate_module, "RETRY_PAUSE_SECONDS", 0.5)
    monkeypatch.setattr(migrate_module, "ATTEMPTS", 200)
    name = _fresh_database()
    try:
        url = _database_url(name)
        migrate(url)
        folder = _with_a_new_migration(tmp_path / "migrations", "ALTER TABLE messages ADD COLUMN probe int;")
        with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as monitor:
            holder.execute("SELECT count(*) FROM messages")
            mine = {holder.info.backend_pid, monitor.info.backend_pid}
            with ThreadPoolExecutor(1) as pool:
                retrying = pool.submit(migrate, url, folder)
                seen_idle = held_idle = False
                for _ in range(2000):
                    pids = [
                        row[0]
                        for row in monitor.execute(
                            "SELECT pid FROM pg_stat_activity"
                            " WHERE datname = %s AND backend_type = 'client backend'",
                            (name,),
                        )
                        if row[0] not in mine
                    ]
                    for pid in pids:
                        idle, held = _lock_outside_a_transaction(monitor, pid)
                        seen_idle, held_idle = seen_idle or idle, held_idle or held
                    if seen_idle and len(pids) == 1:
                        break
                    time.sleep(0.01)
                holder.rollback()
                assert retrying.result(timeout=30) == ["9999_probe"]
        assert seen_idle  # the migrator was caught between two tries
        assert not held_idle
    finally:
        _drop(name)


def test_a_lock_an_earlier_release_left_on_a_pooled_connection_does_not_stop_the_next(tmp_path: Path) -> None:
    # Earlier releases took a session lock and released it in another statement, which PgBouncer may
    # have sent to another server connection: the lock then stayed held on the first. The next release's
    # migrations must not wait for it for ever.
    old_session_lock_key = 0x776170697065
    name = _fresh_database()
    try:
        url = _database_url(name)
        migrate(url)
        folder = _with_a_new_migration(tmp_path / "migrations", "ALTER TABLE messages ADD COLUMN probe int;")
        with psycopg.connect(url, autocommit=True) as pooled:
            pooled.execute("SELECT pg_advisory_lock(%s)", (old_session_lock_key,))
            with ThreadPoolExecutor(1) as pool:
                applying = pool.submit(migrate, url, folder)
                try:
                    assert applying.result(timeout=30) == ["9999_probe"]
                finally:
                    pooled.close()  # lets a migrator stuck behind it finish, so the test ends
    finally:
        _drop(name)
