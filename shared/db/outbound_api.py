"""The notify API's write path (``POST /api/v1/messages``): one statement per accepted message.

What :func:`shared.db.contacts.get_or_create_by_phone` and :func:`shared.db.messages.insert_outbound`
do in five statements inside a transaction (find or create the contact, insert the message under its
idempotency key, add its ``queued`` timeline entry, look up the first message when the key was taken)
is one statement here, run in autocommit: a single round trip and a single commit per accept, where the
API spent seven round trips (pool check, BEGIN, four statements, COMMIT). The pool's checkout check is
still one more; it is what replaces a connection a PostgreSQL restart killed.

Same rows and the same guarantees as the repository functions: a contact created here has no inbound
time (no open window), a message is inserted at most once per idempotency key, and a taken key answers
with the first message's id, status and request hash so the API can replay it or refuse a different body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.db.errors import DatabaseError, wrap_errors

# Each step reads the statement's snapshot, so a row another transaction commits while this one runs is
# invisible to it: a contact created concurrently (our insert did nothing, our lookup saw nothing) or a
# key taken concurrently (ON CONFLICT waited for it, our lookup saw nothing) leaves no row in the answer.
# Running the statement again, with a fresh snapshot, then finds it (see :func:`accept`).
_ACCEPT = """
WITH known AS (
    SELECT id FROM contacts WHERE phone = %(phone)s
), created AS (
    INSERT INTO contacts (phone) SELECT %(phone)s WHERE NOT EXISTS (SELECT FROM known)
    ON CONFLICT (phone) DO NOTHING
    RETURNING id
), contact AS (
    SELECT id FROM known UNION ALL SELECT id FROM created
), inserted AS (
    INSERT INTO messages (contact_id, direction, provider, idempotency_key, request_hash, type, body,
                          payload, status)
    SELECT id, 'out', %(provider)s, %(key)s, %(request_hash)s, %(type)s, %(body)s, %(payload)s, 'queued'
    FROM contact
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), timeline AS (
    INSERT INTO message_events (message_id, status) SELECT id, 'queued' FROM inserted
)
SELECT id, true AS new, 'queued' AS status, %(request_hash)s::text AS request_hash,
       NULL::text AS error_code
FROM inserted
UNION ALL
SELECT id, false, status, request_hash, error_code FROM messages
WHERE idempotency_key = %(key)s AND direction = 'out' AND NOT EXISTS (SELECT FROM inserted)
"""
# Only while still 'queued': a notify batch may already have claimed the committed row (it picks any due
# queued message), and failing a message in flight would let a retry with its key requeue it: two sends.
_FAIL_UNQUEUED = """
WITH failed AS (
    UPDATE messages SET status = 'failed', error_code = %(code)s, error_message = %(message)s,
        updated_at = now()
    WHERE id = %(id)s AND direction = 'out' AND status = 'queued'
    RETURNING id
)
INSERT INTO message_events (message_id, status, error_code, detail)
SELECT id, 'failed', %(code)s, %(message)s FROM failed
RETURNING message_id
"""
# One run that lost a race sees the winner on the next; a third try only guards against the unforeseen.
_ATTEMPTS = 3


@dataclass(frozen=True)
class Stored:
    """The message an idempotency key stands for: just inserted (``new``) or stored by an earlier call."""

    id: int
    new: bool
    status: str
    request_hash: str | None
    error_code: str | None


def accept(
    conn: psycopg.Connection,
    *,
    phone: str,
    idempotency_key: str,
    provider: str,
    type: str,
    body: str | None,
    payload: dict[str, Any],
    request_hash: str,
) -> Stored:
    """Store an outbound message for ``phone`` as ``queued`` unless its key is taken; committed on return.

    ``conn`` must be idle (no transaction open): the statement runs in autocommit, so when this returns
    the row is durable and a notify.send job may be published for it.
    """
    params = {
        "phone": phone,
        "key": idempotency_key,
        "provider": provider,
        "type": type,
        "body": body,
        "payload": Jsonb(payload),
        "request_hash": request_hash,
    }
    with wrap_errors(), _autocommit(conn):
        for _ in range(_ATTEMPTS):
            row = conn.execute(_ACCEPT, params).fetchone()
            if row is not None:
                return Stored(**row)
    raise DatabaseError("no message stored, nor one found under its idempotency key")


@contextlib.contextmanager
def _autocommit(conn: psycopg.Connection) -> Iterator[None]:
    """Autocommit for the block, so no BEGIN and COMMIT round trips; the pool gets the connection back as
    it lent it."""
    conn.autocommit = True
    try:
        yield
    finally:
        if not conn.closed:
            conn.autocommit = False


def fail_unqueued(conn: psycopg.Connection, message_id: int, code: str, message: str) -> bool:
    """Mark a message whose job could not be published ``failed`` (with its timeline entry), unless a
    notify batch has claimed it meanwhile; whether it was marked. Committed on return, like :func:`accept`.
    """
    with wrap_errors(), _autocommit(conn):
        row = conn.execute(_FAIL_UNQUEUED, {"id": message_id, "code": code, "message": message}).fetchone()
    return row is not None
