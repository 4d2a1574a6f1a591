"""What ``wapipe`` says when the database refuses a statement (not when it cannot be reached: see
tests/unit/test_cli.py): the SQLSTATE and the server's message, and the migration it was in, where a
connection failure says its error's type only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.cli import database_failure
from shared.db.migrate import migrate
from tests.conftest import ADMIN_DATABASE_URL
from tests.unit.test_cli import wapipe


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"wapipe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(ADMIN_DATABASE_URL, dbname=name)
    finally:
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_statement_the_database_refuses_says_its_sqlstate_and_message(
    tmp_path: Path, empty_database: str
) -> None:
    # No `wapipe migrate` yet: the table is missing, which is no connection problem to go looking for.
    result = wapipe(tmp_path, "dlq", "list", WAPIPE_DATABASE_URL=empty_database)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wapipe: the database refused a statement: 42P01 "), last
    assert "dead_letters" in last
    # What to do about it, for whoever has not run it yet.
    assert last.endswith("; has `wapipe migrate` been run on this database?"), last


def test_a_failed_migration_is_named(tmp_path: Path, empty_database: str) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_first.sql").write_text("CREATE TABLE t (id int PRIMARY KEY);\n")
    (folder / "0002_broken.sql").write_text("ALTER TABLE missing ADD COLUMN x int;\n")

    with pytest.raises(psycopg.errors.UndefinedTable) as raised:
        migrate(empty_database, folder)

    assert "migration 0002_broken" in raised.value.__notes__
    said = database_failure(raised.value)
    assert said.startswith("the database refused a statement in migration 0002_broken: 42P01 ")
    # Inside a migration a missing table is the migration's own fault: no hint to run the migrations.
    assert "wapipe migrate" not in said
