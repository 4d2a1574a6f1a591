"""Migrations apply each file once, re-apply as a no-op, and are safe when two processes race."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

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
        counts = sorted(int(proc.communicate(timeout=60)[0].strip()) for proc in procs)
        assert all(proc.returncode == 0 for proc in procs)
        # One process did all the work; the other waited on the lock and found nothing left.
        assert counts == [0, len(available())]
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
