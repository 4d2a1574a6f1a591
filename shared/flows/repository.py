"""SQL of the flows stage: the shop-floor host tables, flow_records, and the inbound messages a step reads.

Every function takes the caller's connection (dict rows), so a caller decides the transaction; effects
that must happen together open ``conn.transaction()`` (a savepoint inside an outer transaction).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Jsonb

from shared.db.errors import Duplicate, wrap_errors

Row = dict[str, Any]
# The handler task the router dispatches a menu message to (workers/inbound.py pick_handler), as
# messages.dispatched_to records it.
FLOW_TASK = "flows.step"


class ReplyKeys(NamedTuple):
    """The idempotency keys of a message's reply and of the apology for it (shared/replies.py)."""

    reply_key: str
    apology_key: str


_GET_ORDER = "SELECT * FROM orders WHERE number = %(number)s"
_HOLD_ORDER = """
UPDATE orders SET status = 'ON HOLD', updated_at = now()
WHERE number = %(number)s AND status <> 'ON HOLD'
"""
_GET_MACHINE = "SELECT * FROM machines WHERE id = %(id)s"
_INSERT_RECORD = """
INSERT INTO flow_records
    (reference, flow, kind, contact_id, conversation_id, source_message_id, data, status, due_at, created_at)
VALUES
    (%(reference)s, %(flow)s, %(kind)s, %(contact_id)s, %(conversation_id)s, %(source_message_id)s,
     %(data)s, %(status)s, %(due_at)s, %(created_at)s)
ON CONFLICT (source_message_id) DO NOTHING
RETURNING *
"""
_RECORD_BY_SOURCE = "SELECT * FROM flow_records WHERE source_message_id = %(message_id)s"
_RECORD_BY_REFERENCE = "SELECT * FROM flow_records WHERE reference = %(reference)s"
# A record a chat sender may look up by its reference: one they opened, or a shop-wide one (no contact:
# seeded, or opened outside WhatsApp), like the orders and machines every menu user may look up. Never
# another sender's: references are timestamps, easy to guess.
_SENDERS_RECORD = """
SELECT * FROM flow_records
WHERE reference = %(reference)s AND (contact_id IS NULL OR contact_id = %(contact_id)s)
"""
_OPEN_RECORDS = """
SELECT * FROM flow_records
WHERE contact_id = %(contact_id)s AND status = 'open'
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""
_SET_HANDOFF = """
UPDATE conversations SET status = 'handoff'
WHERE id = %(conversation_id)s AND status = 'open'
"""
_CONVERSATION_STATE = """
SELECT c.status, k.opted_out
FROM conversations c JOIN contacts k ON k.id = c.contact_id
WHERE c.id = %(conversation_id)s
"""
# The inbound messages a step answers, oldest first: those not yet handled after the last one the
# conversation's flow handled, up to the step's own, which is there however old, unless it is handled too
# (a task redelivered after its session expired must not replay its step on an empty state). Where the
# flow stopped is the cursor of its state when the step has one; else (the session expired with no form
# under way, or the conversation's first message) the database's record of it: the latest earlier message
# dispatched to the flow (``dispatched_to``, shared/db/turns.py) and handled. Never an age: a backlog
# (flows workers down) of any length holds messages that are all still owed their answer, in order, and
# an earlier message the flow passed over (its routing stuck) stays passed over.
# The unrouted grace is measured with the database's now(), the clock that stamped created_at: a worker
# whose own clock runs fast or slow must neither pass over a message the router is still deciding on nor
# wait too long.
# Whether a message was answered only by the apology of a run that gave up on it (shared/replies.py
# apologise, under ``%(apology_key)s``): handled, yet its own reply (``%(reply_key)s``) is still owed, which a
# replay of its dead letter (``wapipe dlq replay``) is there to send.
_APOLOGISED_ONLY = """(
    EXISTS (SELECT FROM messages a WHERE a.idempotency_key = %(apology_key)s)
    AND NOT EXISTS (SELECT FROM messages r WHERE r.idempotency_key = %(reply_key)s)
)"""
# The step's own message is also there when it is handled but _APOLOGISED_ONLY (its keys are the
# step's own message's).
# When the user sent a message: the provider's time (inbound.route keeps it in payload.sent_at), never
# later than the router stored it (a provider's clock ahead of ours). A form's timeout is judged by it, not
# by when a step gets to the message: a backlog (workers down) must not time out an answer sent in time.
_SENT_AT = "LEAST(created_at, COALESCE((payload->>'sent_at')::timestamptz, created_at))"
_PENDING_INBOUND = f"""
SELECT id, type, body, payload, created_at, routed_at, dispatched_to, {_SENT_AT} AS sent_at,
       created_at < now() - make_interval(secs => %(grace_seconds)s) AS past_grace
FROM messages
WHERE conversation_id = %(conversation_id)s AND direction = 'in'
  AND id > COALESCE(%(after_id)s::bigint, (
      SELECT max(f.id) FROM messages f
      WHERE f.conversation_id = %(conversation_id)s AND f.direction = 'in' AND f.id < %(upto_id)s
        AND f.dispatched_to = %(flow_task)s AND f.handled_at IS NOT NULL
  ), 0)
  AND id <= %(upto_id)s
  AND (handled_at IS NULL OR (id = %(upto_id)s AND {_APOLOGISED_ONLY}))
ORDER BY id
"""  # noqa: S608 - constant subquery, no input
_ANSWERED = f"""
SELECT {_SENT_AT} AS sent_at, handled_at AS answered_at FROM messages WHERE id = %(id)s AND direction = 'in'
"""  # noqa: S608 - constant expression, no input
_IS_APOLOGISED_ONLY = f"SELECT {_APOLOGISED_ONLY} AS owed"
_MARK_HANDLED = "UPDATE messages SET handled_at = now() WHERE id = %(id)s AND handled_at IS NULL"
_IS_HANDLED = "SELECT handled_at IS NOT NULL AS handled FROM messages WHERE id = %(id)s"
_LAST_ANSWERED = """
SELECT NOT EXISTS (
    SELECT FROM messages later
    WHERE later.conversation_id = m.conversation_id AND later.id > m.id
      AND later.direction = 'in' AND later.handled_at IS NOT NULL
) AS last
FROM messages m
WHERE m.id = %(id)s AND m.conversation_id = %(conversation_id)s AND m.direction = 'in'
"""

_REFERENCE_CONSTRAINT = "flow_records_reference_key"


def get_order(conn: psycopg.Connection, number: str) -> Row | None:
    return conn.execute(_GET_ORDER, {"number": number}).fetchone()


def hold_order(conn: psycopg.Connection, number: str) -> bool:
    """Put an order ON HOLD; False when it was already on hold (or does not exist)."""
    return conn.execute(_HOLD_ORDER, {"number": number}).rowcount > 0


def get_machine(conn: psycopg.Connection, machine_id: str) -> Row | None:
    return conn.execute(_GET_MACHINE, {"id": machine_id}).fetchone()


def get_record(conn: psycopg.Connection, reference: str) -> Row | None:
    return conn.execute(_RECORD_BY_REFERENCE, {"reference": reference}).fetchone()


def senders_record(conn: psycopg.Connection, reference: str, contact_id: int | None) -> Row | None:
    """The record ``reference`` if the contact may see it (theirs, or shop-wide); else None."""
    return conn.execute(_SENDERS_RECORD, {"reference": reference, "contact_id": contact_id}).fetchone()


def open_records(conn: psycopg.Connection, contact_id: int, limit: int = 10) -> list[Row]:
    return conn.execute(_OPEN_RECORDS, {"contact_id": contact_id, "limit": limit}).fetchall()


def create_record(
    conn: psycopg.Connection,
    *,
    prefix: str,
    flow: str,
    kind: str,
    contact_id: int | None,
    conversation_id: int | None,
    source_message_id: int | None,
    data: dict[str, Any],
    now: datetime,
    due_at: datetime | None = None,
    status: str = "open",
    reference: str | None = None,
) -> tuple[Row, bool]:
    """Store a record with a fresh ``PREFIX-YYYYMMDDHHMMSS`` reference; return it and whether it is new.

    Idempotent on ``source_message_id``: the same message again returns the record it made. Two records
    in the same second get ``-2``, ``-3``... suffixes (the reference is unique, so we retry on Duplicate).
    """
    base = reference or f"{prefix}-{now:%Y%m%d%H%M%S}"
    params = {
        "flow": flow,
        "kind": kind,
        "contact_id": contact_id,
        "conversation_id": conversation_id,
        "source_message_id": source_message_id,
        "data": Jsonb(data),
        "status": status,
        "due_at": due_at,
        "created_at": now,
    }
    for attempt in range(1, 100):
        params["reference"] = base if attempt == 1 else f"{base}-{attempt}"
        try:
            with wrap_errors(), conn.transaction():
                row = conn.execute(_INSERT_RECORD, params).fetchone()
        except Duplicate as exc:
            if exc.constraint == _REFERENCE_CONSTRAINT:
                continue
            raise
        if row is not None:
            return row, True
        existing = conn.execute(_RECORD_BY_SOURCE, {"message_id": source_message_id}).fetchone()
        if existing is not None:
            return existing, False
    raise Duplicate(_REFERENCE_CONSTRAINT)


def set_handoff(conn: psycopg.Connection, conversation_id: int) -> bool:
    """Hand an open conversation to a human: the inbound router stops answering it."""
    return conn.execute(_SET_HANDOFF, {"conversation_id": conversation_id}).rowcount > 0


def conversation_state(conn: psycopg.Connection, conversation_id: int) -> Row | None:
    """``{"status", "opted_out"}`` of a conversation and its contact."""
    return conn.execute(_CONVERSATION_STATE, {"conversation_id": conversation_id}).fetchone()


def pending_inbound(
    conn: psycopg.Connection,
    conversation_id: int,
    after_id: int | None,
    upto_id: int,
    *,
    grace_seconds: float,
    reply_keys: ReplyKeys,
) -> list[Row]:
    """Unhandled inbound messages after ``after_id`` up to ``upto_id``; with ``after_id`` None, after the
    last earlier message the flow handled (:data:`_PENDING_INBOUND`). ``upto_id`` itself is always in, and
    also when handled, if only by an apology (``reply_keys`` are its reply's and its apology's).
    ``past_grace``: stored more than ``grace_seconds`` ago, by the database's clock. ``sent_at``: when the
    user sent it (:data:`_SENT_AT`)."""
    params = {
        "conversation_id": conversation_id,
        "after_id": after_id,
        "upto_id": upto_id,
        "flow_task": FLOW_TASK,
        "grace_seconds": grace_seconds,
        **reply_keys._asdict(),
    }
    return conn.execute(_PENDING_INBOUND, params).fetchall()


class Answered(NamedTuple):
    """When the user sent an answer (:data:`_SENT_AT`), and when the flow answered it (its next question
    asked; None while it is not), both by the database's clock."""

    sent_at: datetime
    answered_at: datetime | None


def answered(conn: psycopg.Connection, message_id: int) -> Answered | None:
    """When the user sent inbound ``message_id`` and when the flow answered it; None when it is no longer
    stored."""
    row = conn.execute(_ANSWERED, {"id": message_id}).fetchone()
    return Answered(row["sent_at"], row["answered_at"]) if row else None


def apologised_only(conn: psycopg.Connection, reply_keys: ReplyKeys) -> bool:
    """Whether a message was answered only by an apology: its reply (``reply_keys``) is still owed."""
    row = conn.execute(_IS_APOLOGISED_ONLY, reply_keys._asdict()).fetchone()
    return bool(row and row["owed"])


def db_now(conn: psycopg.Connection) -> datetime:
    """The database's clock: the one every stored time was stamped with."""
    row = conn.execute("SELECT now() AS now").fetchone()
    assert row is not None
    return row["now"]


def mark_handled(conn: psycopg.Connection, message_id: int) -> None:
    conn.execute(_MARK_HANDLED, {"id": message_id})


def last_answered_in(conn: psycopg.Connection, conversation_id: int, message_id: int) -> bool:
    """Whether inbound ``message_id`` is the conversation's, and none of its later messages was answered."""
    row = conn.execute(_LAST_ANSWERED, {"id": message_id, "conversation_id": conversation_id}).fetchone()
    return bool(row and row["last"])


def is_handled(conn: psycopg.Connection, message_id: int) -> bool:
    """Whether the message was answered; a message no longer stored counts as answered (nothing to do)."""
    row = conn.execute(_IS_HANDLED, {"id": message_id}).fetchone()
    return row is None or bool(row["handled"])
