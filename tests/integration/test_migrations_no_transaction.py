"""Migrations marked ``-- wapipe: no-transaction`` run outside a transaction (CREATE INDEX CONCURRENTLY):
once each, recorded only after they succeed, serialised between processes, and a concurrent build that
failed leaves no invalid index behind once the migration is run again."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from shared.db import migrate as migrate_module
from shared.db.migrate import NO_TRANSACTION_MARKER, migrate
from tests.conftest import _database_url
from tests.integration.test_migrations import _drop, _fresh_database, copy_migrations


def _with_probes(folder: Path, probes: dict[str, str]) -> Path:
    """The project's migrations plus ``probes`` (file name -> text)."""
    copy_migrations(folder, lambda version: True)
    for name, text in probes.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _index_valid(conn: psycopg.Connection, name: str) -> bool | None:
    """Whether the index is valid; None when there is none of that name."""
    row = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)
    ).fetchone()
    return None if row is None else row[0]


def _applied(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


@pytest.fixture
def migrated_url() -> Iterator[str]:
    """A database of its own with every migration applied, dropped after."""
    name = _fresh_database()
    try:
        url = _database_url(name)
        migrate(url)
        yield url
    finally:
        _drop(name)


def test_a_no_transaction_migration_builds_its_index_concurrently(tmp_path: Path, migrated_url: str) -> None:
    # PostgreSQL refuses CREATE INDEX CONCURRENTLY inside a transaction; the file's statements run one by
    # one (a ';' in a string or a comment does not end one).
    probe = (
        f"{NO_TRANSACTION_MARKER}\n"
        "-- an index on the busy table; not here; nor here\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_index ON messages (created_at, id);\n"
        "COMMENT ON INDEX probe_index IS 'built; concurrently';\n"
    )
    folder = _with_probes(tmp_path / "migrations", {"9999_probe.sql": probe})
    assert migrate(migrated_url, folder) == ["9999_probe"]
    assert migrate(migrated_url, folder) == []
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        assert _index_valid(conn, "probe_index") is True
        comment = conn.execute("SELECT obj_description(to_regclass('probe_index'), 'pg_class')").fetchone()
        assert comment == ("built; concurrently",)
        assert _applied(conn)[-1] == "9999_probe"


def test_a_failed_concurrent_build_is_not_recorded_and_its_invalid_index_is_built_again(
    tmp_path: Path, migrated_url: str
) -> None:
    # A unique build that meets duplicates fails after PostgreSQL has made the index: it stays, INVALID.
    # IF NOT EXISTS alone would then skip it on every later run, leaving the release without its index.
    probe = (
        f"{NO_TRANSACTION_MARKER}\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS probe_unique ON probe_values (v);\n"
    )
    folder = _with_probes(tmp_path / "migrations", {"9999_probe.sql": probe})
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE probe_values (v int)")
        conn.execute("INSERT INTO probe_values VALUES (1), (1), (2)")
        with pytest.raises(errors.UniqueViolation) as failure:
            migrate(migrated_url, folder)
        assert "migration 9999_probe" in failure.value.__notes__
        assert _index_valid(conn, "probe_unique") is False
        assert "9999_probe" not in _applied(conn)

        conn.execute("DELETE FROM probe_values WHERE ctid = (SELECT min(ctid) FROM probe_values WHERE v = 1)")
        assert migrate(migrated_url, folder) == ["9999_probe"]
        assert _index_valid(conn, "probe_unique") is True
        assert "9999_probe" in _applied(conn)
        with pytest.raises(errors.UniqueViolation):
            conn.execute("INSERT INTO probe_values VALUES (2)")


def test_many_migrators_at_once_run_a_no_transaction_migration_once(
    tmp_path: Path, migrated_url: str
) -> None:
    # The first process builds while the others wait for its lock. They must not wait in a way the
    # concurrent build waits for in turn (a snapshot), or one of them fails with a deadlock. The
    # transactional migration after it runs once too, and only after it is recorded.
    building = (
        f"{NO_TRANSACTION_MARKER}\n"
        "SELECT pg_sleep(0.3);\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_index ON messages (created_at, id);\n"
        "INSERT INTO probe_runs VALUES ('9998_probe');\n"
    )
    after = (
        "INSERT INTO probe_runs SELECT '9999_probe after ' || count(*) FROM schema_migrations"
        " WHERE version = '9998_probe';"
    )
    folder = _with_probes(tmp_path / "migrations", {"9998_probe.sql": building, "9999_probe.sql": after})
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE probe_runs (run text NOT NULL)")
    code = (
        "import sys, pathlib; from shared.db.migrate import migrate;"
        " print(len(migrate(sys.argv[1], pathlib.Path(sys.argv[2]))))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, migrated_url, str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()  # only those a failure left waiting
    assert [proc.returncode for proc in procs] == [0] * 4, [err for _, err in outputs]
    assert sum(int(out.strip()) for out, _ in outputs) == 2
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        runs = [row[0] for row in conn.execute("SELECT run FROM probe_runs ORDER BY 1")]
        assert runs == ["9998_probe", "9999_probe after 1"]
        assert _index_valid(conn, "probe_index") is True
        assert _applied(conn)[-2:] == ["9998_probe", "9999_probe"]
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        assert held == (0,)


def test_a_concurrent_build_waits_for_an_old_transaction_instead_of_timing_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_url: str
) -> None:
    # A concurrent build waits for every transaction older than it, and blocks no reads or writes while it
    # does: a lock_timeout (the runner's) or statement_timeout (the role's, as deploy/README.md advises
    # behind PgBouncer) cutting that wait short would only leave an invalid index and start again.
    monkeypatch.setattr(migrate_module, "LOCK_TIMEOUT", "100ms")
    monkeypatch.setattr(migrate_module, "ATTEMPTS", 1)
    probe = (
        f"{NO_TRANSACTION_MARKER}\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_index ON messages (created_at);\n"
    )
    folder = _with_probes(tmp_path / "migrations", {"9999_probe.sql": probe})
    database = psycopg.conninfo.conninfo_to_dict(migrated_url)["dbname"]
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{database}\" SET lock_timeout = '100ms'")
        conn.execute(f"ALTER DATABASE \"{database}\" SET statement_timeout = '200ms'")
    with psycopg.connect(migrated_url) as holder, psycopg.connect(migrated_url, autocommit=True) as monitor:
        holder.execute("UPDATE messages SET body = body WHERE false")  # a writer's open transaction
        with ThreadPoolExecutor(1) as pool:
            building = pool.submit(migrate, migrated_url, folder)
            waits_seen = 0
            for _ in range(500):
                row = monitor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
                    " AND query LIKE 'CREATE INDEX CONCURRENTLY%%'",
                    (database,),
                ).fetchone()
                waits_seen += row is not None and row[0] > 0
                if waits_seen > 5 or building.done():  # waited well past both timeouts
                    break
                time.sleep(0.1)
            holder.rollback()
            assert building.result(timeout=30) == ["9999_probe"]
        assert waits_seen > 5
        assert _index_valid(monitor, "probe_index") is True
