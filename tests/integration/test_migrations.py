"""Migrations apply each file once, re-apply as a no-op, and are safe when two processes race."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg

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
