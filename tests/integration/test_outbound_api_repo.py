"""The notify API's one-statement write (shared/db/outbound_api.py) against real PostgreSQL: committed when
it returns, the same message for a taken key, and the pooled connection handed back as it was lent."""

from __future__ import annotations

from typing import Any

import psycopg

from shared.db import outbound_api
from shared.db.outbound_api import NewOutbound
from shared.db.pool import connection

PHONE = "+573103055424"


def message(key: str, text: str = "hi", request_hash: str = "h1", phone: str = PHONE) -> NewOutbound:
    return NewOutbound(
        phone=phone,
        idempotency_key=key,
        provider="console",
        type="text",
        body=text,
        payload={},
        request_hash=request_hash,
    )


def accept(key: str, text: str = "hi", request_hash: str = "h1") -> outbound_api.Stored:
    with connection() as conn:
        stored = outbound_api.accept(conn, message(key, text, request_hash))
        # Back to the pool in the mode every other caller expects (transaction() opens its own).
        assert conn.autocommit is False
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    return stored


def test_a_new_message_is_committed_with_its_contact_and_timeline(db: psycopg.Connection) -> None:
    stored = accept("api:one")

    assert (stored.new, stored.status, stored.request_hash, stored.error_code) == (True, "queued", "h1", None)
    # Seen from another connection: durable before the API publishes the job or answers.
    row = db.execute(
        "SELECT m.direction, m.status, m.body, m.idempotency_key, c.phone, c.last_inbound_at"
        " FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.id = %s",
        (stored.id,),
    ).fetchone()
    assert row == {
        "direction": "out",
        "status": "queued",
        "body": "hi",
        "idempotency_key": "api:one",
        "phone": PHONE,
        "last_inbound_at": None,  # created by the API: no open window
    }
    events = db.execute("SELECT status FROM message_events WHERE message_id = %s", (stored.id,)).fetchall()
    assert events == [{"status": "queued"}]


def test_a_taken_key_answers_the_first_message_and_stores_nothing(db: psycopg.Connection) -> None:
    first = accept("api:two", request_hash="h1")
    db.execute(
        "UPDATE messages SET status = 'failed', error_code = 'queue_unavailable' WHERE id = %s", (first.id,)
    )

    again = accept("api:two", text="other", request_hash="h2")

    assert (again.id, again.new, again.status, again.request_hash, again.error_code) == (
        first.id,
        False,
        "failed",
        "h1",
        "queue_unavailable",
    )
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM message_events").fetchone()["n"] == 1


def test_many_messages_are_one_statement_in_autocommit(db: psycopg.Connection, monkeypatch: Any) -> None:
    # The point of the module: one round trip for the messages of concurrent requests, with no BEGIN and
    # COMMIT around it and no follow-up lookups.
    statements: list[tuple[str, bool]] = []
    real = psycopg.Connection.execute

    def counted(self: psycopg.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append((str(query).split()[0], self.autocommit))
        return real(self, query, *args, **kwargs)

    with connection() as conn:
        monkeypatch.setattr(psycopg.Connection, "execute", counted)  # after the pool's checkout check
        outbound_api.accept_many(conn, [message("api:three"), message("api:3", phone="+14155550123")])
        monkeypatch.undo()

    assert statements == [("WITH", True)]


def test_a_lost_job_fails_a_queued_message_but_not_one_a_notify_batch_claimed(db: psycopg.Connection) -> None:
    queued_one, claimed = accept("api:four"), accept("api:five")
    # A notify batch picks any due queued message, so the row may be in flight before its own job is out.
    db.execute("UPDATE messages SET status = 'sending', claimed_by = id WHERE id = %s", (claimed.id,))

    with connection() as conn:
        assert outbound_api.fail_unqueued(conn, queued_one.id, "queue_unavailable", "lost") is True
        assert outbound_api.fail_unqueued(conn, claimed.id, "queue_unavailable", "lost") is False
        assert conn.autocommit is False

    rows = db.execute("SELECT id, status, error_code FROM messages ORDER BY id").fetchall()
    assert rows == [
        {"id": queued_one.id, "status": "failed", "error_code": "queue_unavailable"},
        {"id": claimed.id, "status": "sending", "error_code": None},
    ]
    events = db.execute("SELECT message_id, status FROM message_events WHERE status = 'failed'").fetchall()
    assert events == [{"message_id": queued_one.id, "status": "failed"}]


def test_a_list_answers_each_message_in_order(db: psycopg.Connection) -> None:
    # New contacts, a known one, a key stored before, and one key twice (a caller's concurrent retries
    # landing in one batch): each answer is what that message alone would have got.
    earlier = accept("api:earlier", request_hash="e")
    with connection() as conn:
        answers = outbound_api.accept_many(
            conn,
            [
                message("api:a", phone="+14155550123"),
                message("api:earlier", request_hash="other"),
                message("api:b"),
                message("api:a", phone="+14155550123"),
                message("api:c", phone="+14155550123"),
            ],
        )

    a, again, b, a_twice, c = answers
    assert (a.new, b.new, c.new) == (True, True, True)
    assert (again.id, again.new, again.request_hash) == (earlier.id, False, "e")
    assert (a_twice.id, a_twice.new) == (a.id, False)
    assert len({a.id, b.id, c.id, earlier.id}) == 4
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 4
    assert db.execute("SELECT count(*) AS n FROM message_events").fetchone()["n"] == 4
    phones = db.execute("SELECT phone FROM contacts ORDER BY phone").fetchall()
    assert phones == [{"phone": "+14155550123"}, {"phone": PHONE}]
