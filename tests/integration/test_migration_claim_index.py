"""Migration 0016 replaces 0006's index of the queued outbound messages with one that also holds their
send_after, for notify's claim: on a fresh database, on one at 0014 with messages, and after a build of it
that failed."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from shared.db import sending
from shared.db.migrate import migrate
from tests.conftest import _database_url
from tests.integration.test_migrations import _drop, _fresh_database, migrated_before

VERSION = "0016_claim_skips_backed_off"
INDEX = "messages_outbound_queued_due"
REPLACED = "messages_outbound_queued"


def _indexes(conn: psycopg.Connection) -> dict[str, bool]:
    """The name and validity of each index on messages."""
    rows = conn.execute(
        "SELECT c.relname AS name, i.indisvalid AS valid"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'messages'::regclass"
    ).fetchall()
    return {row["name"]: row["valid"] for row in rows}


def _queued(conn: psycopg.Connection, due_in: float | None) -> int:
    """A queued outbound message due in ``due_in`` seconds (None: no send_after, due now)."""
    row = conn.execute(
        "INSERT INTO messages (direction, provider, body, status, send_after)"
        " VALUES ('out', 'twilio', 'hi', 'queued', now() + make_interval(secs => %s)) RETURNING id",
        (due_in,),
    ).fetchone()
    return row["id"]


def test_a_fresh_database_gets_the_new_index_in_place_of_the_old() -> None:
    name = _fresh_database()
    try:
        url = _database_url(name)
        assert VERSION in migrate(url)
        with psycopg.connect(url, row_factory=dict_row) as conn:
            indexes = _indexes(conn)
        assert indexes[INDEX] is True
        assert REPLACED not in indexes
    finally:
        _drop(name)


def test_at_0014_with_messages_the_claim_then_takes_the_due_ones_past_those_backed_off(
    tmp_path: Path,
) -> None:
    with migrated_before(VERSION, tmp_path) as (conn, url):
        backed_off = [_queued(conn, 3600) for _ in range(3)]
        own = _queued(conn, None)
        passed = _queued(conn, -1)
        due = _queued(conn, None)
        assert REPLACED in _indexes(conn)

        assert migrate(url)[0] == VERSION  # and any later migration

        indexes = _indexes(conn)
        assert indexes[INDEX] is True
        assert REPLACED not in indexes
        claim = sending.claim(conn, own, more=10)
        assert claim is not None
        assert [record.id for record in claim.batch] == [own, passed, due]
        still_queued = conn.execute("SELECT id FROM messages WHERE status = 'queued' ORDER BY id").fetchall()
        assert [row["id"] for row in still_queued] == backed_off


def test_a_build_of_it_that_failed_is_done_again(tmp_path: Path) -> None:
    # What an interrupted CREATE INDEX CONCURRENTLY leaves: the index, marked invalid (unused by queries,
    # yet kept up to date by every write). IF NOT EXISTS alone would keep it so for good.
    with migrated_before(VERSION, tmp_path) as (conn, url):
        conn.execute(
            f"CREATE INDEX {INDEX} ON messages (id, COALESCE(send_after, '-infinity'::timestamptz))"
            " WHERE direction = 'out' AND status = 'queued'"
        )
        conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", (INDEX,))
        assert _indexes(conn)[INDEX] is False

        assert migrate(url)[0] == VERSION  # and any later migration

        indexes = _indexes(conn)
        assert indexes[INDEX] is True
        assert REPLACED not in indexes
