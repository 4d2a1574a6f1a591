"""One pending dead letter per (task, message), even when two failures of it are recorded at once, so a
``wapipe dlq replay --all`` cannot enqueue the message twice; and migration 0014 collapses the duplicates a
database may already hold before it makes that a rule."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.db import dead_letters
from shared.db.migrate import migrate
from tests.integration.test_migrations import copy_migrations, migrated_before

VERSION = "0014_dead_letters_one_pending"


def outbound(db: psycopg.Connection) -> int:
    return db.execute(
        "INSERT INTO messages (direction, provider, body, status) VALUES ('out', 'meta', 'hi', 'failed')"
        " RETURNING id"
    ).fetchone()["id"]


def pending(db: psycopg.Connection, message_id: int) -> list[dict]:
    return db.execute(
        "SELECT id, error FROM dead_letters WHERE message_id = %s AND replayed_at IS NULL"
        " AND discarded_at IS NULL ORDER BY id",
        (message_id,),
    ).fetchall()


def add(conn: psycopg.Connection, message_id: int, error: str) -> dead_letters.DeadLetter:
    return dead_letters.add(
        conn,
        task_name="notify.send",
        message_id=message_id,
        payload={"message_id": message_id},
        error=error,
        attempts=6,
    )


def test_two_failures_recorded_at_once_leave_one_pending_letter(db, test_servers: dict[str, str]) -> None:
    message_id = outbound(db)
    url = test_servers["WAPIPE_DATABASE_URL"]
    with (
        psycopg.connect(url, row_factory=dict_row) as first,
        psycopg.connect(url, row_factory=dict_row) as second,
        ThreadPoolExecutor(1) as pool,
    ):
        # The first worker's transaction has added its letter and not yet committed when the second adds.
        mine = add(first, message_id, "first")
        theirs = pool.submit(add, second, message_id, "second")
        with pytest.raises(TimeoutError):
            theirs.result(timeout=0.5)  # waits for the first to commit, rather than adding a second letter
        first.commit()
        other = theirs.result(timeout=30)
        second.commit()

    assert other.id == mine.id
    assert [row["error"] for row in pending(db, message_id)] == ["first"]


def test_a_letter_is_added_again_once_the_pending_one_is_replayed(db) -> None:
    message_id = outbound(db)
    first = add(db, message_id, "first")
    assert add(db, message_id, "again").id == first.id
    assert dead_letters.mark_replayed(db, first.id) is not None

    again = add(db, message_id, "after the replay")
    assert again.id != first.id
    assert [row["error"] for row in pending(db, message_id)] == ["after the replay"]


@pytest.fixture
def before_0014(tmp_path: Path) -> Iterator[tuple[psycopg.Connection, str, Path]]:
    """A database with every migration before 0014 applied, and a folder with 0014 too."""
    every = copy_migrations(tmp_path / "every", lambda each: each <= VERSION)
    with migrated_before(VERSION, tmp_path) as (conn, url):
        yield conn, url, every


def test_the_migration_keeps_the_oldest_of_duplicate_pending_letters(
    before_0014: tuple[psycopg.Connection, str, Path],
) -> None:
    conn, url, every = before_0014
    message_id = outbound(conn)
    for error in ("oldest", "duplicate", "another duplicate"):
        conn.execute(
            "INSERT INTO dead_letters (task_name, message_id, payload, error)"
            " VALUES ('notify.send', %s, '{}', %s)",
            (message_id, error),
        )
    replayed = conn.execute(
        "INSERT INTO dead_letters (task_name, message_id, payload, error, replayed_at)"
        " VALUES ('notify.send', %s, '{}', 'replayed before', now()) RETURNING id",
        (message_id,),
    ).fetchone()["id"]

    assert VERSION in migrate(url, every)

    assert [row["error"] for row in pending(conn, message_id)] == ["oldest"]
    closed = conn.execute(
        "SELECT error, discard_reason FROM dead_letters WHERE discarded_at IS NOT NULL ORDER BY id"
    ).fetchall()
    assert [row["error"] for row in closed] == ["duplicate", "another duplicate"]
    assert all("duplicate of dead letter" in row["discard_reason"] for row in closed)
    # Kept as it was: nothing but pending duplicates is touched.
    assert conn.execute("SELECT replayed_at FROM dead_letters WHERE id = %s", (replayed,)).fetchone()[
        "replayed_at"
    ]
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "INSERT INTO dead_letters (task_name, message_id, payload, error)"
            " VALUES ('notify.send', %s, '{}', 'x')",
            (message_id,),
        )
