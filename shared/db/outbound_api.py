"""The notify API's write path (``POST /api/v1/messages``): one statement per accepted message, or fewer.

Finding or creating the contact, inserting the message under its idempotency key, adding its ``queued``
timeline entry and looking up the first message when the key was taken is one statement here, run in
autocommit: a single round trip and a single commit per accept, where the API used to spend seven
(pool check, BEGIN, four statements, COMMIT).

A contact created here has no inbound time (no open window), a message is inserted at most once per
idempotency key, and a taken key answers with the first message's id, status and request hash so the
API can replay it or refuse a different body. A message may also name the key an earlier release stored
the same request under (``legacy_key``): a row stored under it is answered in its place.
The statement takes many messages at once, so concurrent requests can share one round trip and one commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.db.errors import DatabaseError, wrap_errors
from shared.db.pool import autocommit

# Several messages per statement (the API stores concurrent requests together: ingress/api/group_store.py),
# each input row numbered ``n`` so the answer can be matched to it; the keys of one run are distinct. The
# contact lookup takes the phones as an array so it stays an index scan whatever the planner guesses of
# the input's size.
# Contacts and messages are inserted in key order, so two runs that overlap wait for each other in the same
# order and never deadlock.
#
# Each step reads the statement's snapshot, so a row another transaction commits while this one runs is
# invisible to it: a contact created concurrently (our insert did nothing, our lookup saw nothing) or a
# key taken concurrently (ON CONFLICT waited for it, our lookup saw nothing) leaves that input row out of
# the answer. Running it again, with a fresh snapshot, then finds the row (see :func:`accept_many`).
_ACCEPT = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(messages)s::jsonb) AS i (
        n int, phone text, key text, legacy_key text, provider text, type text, body text, payload jsonb,
        request_hash text
    )
), legacy AS (
    SELECT i.n, m.id, m.status, m.request_hash, m.error_code
    FROM input i JOIN messages m ON m.idempotency_key = i.legacy_key AND m.direction = 'out'
), fresh AS (
    SELECT * FROM input WHERE n NOT IN (SELECT n FROM legacy)
), known AS (
    SELECT id, phone FROM contacts WHERE phone = ANY (ARRAY(SELECT phone FROM fresh))
), created AS (
    INSERT INTO contacts (phone)
    SELECT DISTINCT phone FROM fresh WHERE phone NOT IN (SELECT phone FROM known)
    ORDER BY phone
    ON CONFLICT (phone) DO NOTHING
    RETURNING id, phone
), contact AS (
    SELECT id, phone FROM known UNION ALL SELECT id, phone FROM created
), inserted AS (
    INSERT INTO messages (contact_id, direction, provider, idempotency_key, request_hash, type, body,
                          payload, status)
    SELECT c.id, 'out', i.provider, i.key, i.request_hash, i.type, i.body, i.payload, 'queued'
    FROM fresh i JOIN contact c ON c.phone = i.phone
    ORDER BY i.key
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key
), timeline AS (
    INSERT INTO message_events (message_id, status) SELECT id, 'queued' FROM inserted
)
SELECT i.n, s.id, true AS new, 'queued' AS status, i.request_hash, NULL::text AS error_code
FROM fresh i JOIN inserted s ON s.idempotency_key = i.key
UNION ALL
SELECT i.n, m.id, false, m.status, m.request_hash, m.error_code
FROM fresh i JOIN messages m ON m.idempotency_key = i.key AND m.direction = 'out'
WHERE NOT EXISTS (SELECT FROM inserted s WHERE s.idempotency_key = i.key)
UNION ALL
SELECT n, id, false, status, request_hash, error_code FROM legacy
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
class NewOutbound:
    """An outbound message the API is asked to store for ``phone`` under ``idempotency_key``."""

    phone: str
    idempotency_key: str
    provider: str
    type: str
    body: str | None
    payload: dict[str, Any]
    request_hash: str
    # The key an earlier release stored this request under, when it had one: its row, if any, is the answer
    # (no row is ever inserted under it any more, so it cannot be taken meanwhile).
    legacy_key: str | None = None


@dataclass(frozen=True)
class Stored:
    """The message an idempotency key stands for: just inserted (``new``) or stored by an earlier call."""

    id: int
    new: bool
    status: str
    request_hash: str | None
    error_code: str | None


def accept(conn: psycopg.Connection, message: NewOutbound) -> Stored:
    """Store ``message`` as ``queued`` unless its key is taken; committed on return (:func:`accept_many`)."""
    [outcome] = accept_many(conn, [message])
    if isinstance(outcome, DatabaseError):
        raise outcome
    return outcome


def accept_many(conn: psycopg.Connection, messages: Sequence[NewOutbound]) -> list[Stored | DatabaseError]:
    """Store each message as ``queued`` unless its key is taken; what each key stands for, in order.

    ``conn`` must be idle (no transaction open): the statements run in autocommit, so when this returns
    every row is durable and notify.send jobs may be published for them. One statement stores them all,
    unless some lost a race with a concurrent request or share a key with an earlier one of the list:
    those go again, in a statement that then sees the row.

    When that later statement fails, the messages the first one stored are committed all the same: they
    are answered with their rows, and only the others with the error (raised when no message was
    stored). Answering them all with the error told callers "nothing was stored" of rows notify.sweep
    would send, and a caller without a key sent its message again.
    """
    found: list[Stored | None] = [None] * len(messages)
    tries = [0] * len(messages)
    try:
        with wrap_errors(), autocommit(conn):
            while todo := _next_run(messages, found, tries):
                rows = conn.execute(_ACCEPT, _params([messages[i] for i in todo])).fetchall()
                for row in rows:
                    index = todo[row.pop("n") - 1]
                    found[index] = Stored(**row)
    except DatabaseError as exc:
        if not any(found):
            raise
        return [stored if stored is not None else exc for stored in found]
    return [stored for stored in found if stored is not None]


def _next_run(messages: Sequence[NewOutbound], found: list[Stored | None], tries: list[int]) -> list[int]:
    """The indexes still without an answer, at most one per key (a second waits for the first's row)."""
    todo: list[int] = []
    keys: set[str] = set()
    for index, message in enumerate(messages):
        if found[index] is None and message.idempotency_key not in keys:
            if tries[index] == _ATTEMPTS:
                raise DatabaseError("no message stored, nor one found under its idempotency key")
            tries[index] += 1
            todo.append(index)
            keys.add(message.idempotency_key)
    return todo


def _params(messages: Sequence[NewOutbound]) -> dict[str, Any]:
    # One JSON document rather than an array per column: psycopg adapts a list element by element (tens
    # of microseconds a message), json.dumps does it at C speed; the statement reads it back as rows.
    rows = [
        {
            "n": n,
            "phone": m.phone,
            "key": m.idempotency_key,
            "legacy_key": m.legacy_key,
            "provider": m.provider,
            "type": m.type,
            "body": m.body,
            "payload": m.payload,
            "request_hash": m.request_hash,
        }
        for n, m in enumerate(messages, 1)
    ]
    return {"messages": Jsonb(rows)}


def fail_unqueued(conn: psycopg.Connection, message_id: int, code: str, message: str) -> bool:
    """Mark a message whose job could not be published ``failed`` (with its timeline entry), unless a
    notify batch has claimed it meanwhile; whether it was marked. Committed on return, like :func:`accept`.
    """
    with wrap_errors(), autocommit(conn):
        row = conn.execute(_FAIL_UNQUEUED, {"id": message_id, "code": code, "message": message}).fetchone()
    return row is not None
