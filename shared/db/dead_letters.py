"""Dead letters: work that exhausted its retries (or whose outcome is unknown), kept for an operator.

``wapipe dlq list`` shows the pending ones; ``wapipe dlq replay`` re-enqueues their task and marks them
replayed; ``wapipe dlq discard`` closes them without doing anything, keeping the operator's reason. A letter
is pending while it is neither replayed nor discarded, and it is never both (0010_dead_letter_discard.sql).
The row keeps the task name and its kwargs, so any stage can dead-letter, not only notify.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.db.errors import wrap_errors

_COLUMNS = (
    "id, task_name, message_id, payload, error, attempts, created_at, replayed_at,"
    " discarded_at, discard_reason"
)
# Matches the partial indexes dead_letters_pending and dead_letters_one_pending.
_IS_PENDING = "replayed_at IS NULL AND discarded_at IS NULL"

# One pending letter per (task, message): the unique index dead_letters_one_pending (0014). A second letter
# for it, even one added while the first's transaction has not committed (it waits for that commit),
# updates nothing and returns the first: a look-then-insert let both in, and a replay --all then enqueued
# the message twice. (DO UPDATE, not DO NOTHING: it returns the conflicting row.) A letter without a
# message never conflicts (NULLs are distinct).
_ADD = f"""
INSERT INTO dead_letters (task_name, message_id, payload, error, attempts)
VALUES (%(task_name)s, %(message_id)s, %(payload)s, %(error)s, %(attempts)s)
ON CONFLICT (task_name, message_id) WHERE {_IS_PENDING}
DO UPDATE SET task_name = dead_letters.task_name
RETURNING {_COLUMNS}
"""  # noqa: S608 - constant column list and statuses, no input
_GET = f"SELECT {_COLUMNS} FROM dead_letters WHERE id = %(id)s"  # noqa: S608 - constant column list, no input
_GET_FOR_UPDATE = _GET + " FOR UPDATE"
_LIST_PENDING = f"""
SELECT {_COLUMNS} FROM dead_letters WHERE {_IS_PENDING} AND id > %(after)s ORDER BY id LIMIT %(limit)s
"""  # noqa: S608 - constant column list and statuses, no input
_MARK_REPLAYED = f"""
UPDATE dead_letters SET replayed_at = now() WHERE id = %(id)s AND {_IS_PENDING} RETURNING {_COLUMNS}
"""  # noqa: S608 - constant column list and statuses, no input
_REOPEN = f"""
UPDATE dead_letters SET replayed_at = NULL WHERE id = %(id)s AND replayed_at IS NOT NULL RETURNING {_COLUMNS}
"""  # noqa: S608 - constant column list, no input
_PENDING_FOR = f"""
SELECT {_COLUMNS} FROM dead_letters
WHERE task_name = %(task_name)s AND message_id = %(message_id)s AND {_IS_PENDING}
"""  # noqa: S608 - constant column list and statuses, no input
_MARK_DISCARDED = f"""
UPDATE dead_letters SET discarded_at = now(), discard_reason = %(reason)s
WHERE id = %(id)s AND {_IS_PENDING} RETURNING {_COLUMNS}
"""  # noqa: S608 - constant column list and statuses, no input


@dataclass(frozen=True)
class DeadLetter:
    id: int
    task_name: str
    message_id: int | None
    payload: dict[str, Any]  # the task's kwargs
    error: str
    attempts: int
    created_at: datetime
    replayed_at: datetime | None
    discarded_at: datetime | None
    discard_reason: str | None  # the operator's words, set with discarded_at

    @property
    def pending(self) -> bool:
        return self.replayed_at is None and self.discarded_at is None


def add(
    conn: psycopg.Connection,
    *,
    task_name: str,
    payload: dict[str, Any],
    error: str,
    attempts: int,
    message_id: int | None = None,
) -> DeadLetter:
    """Record a dead letter; a second one for the same pending (task, message) returns the first."""
    with wrap_errors():
        row = conn.execute(
            _ADD,
            {
                "task_name": task_name,
                "message_id": message_id,
                "payload": Jsonb(payload),
                "error": error,
                "attempts": attempts,
            },
        ).fetchone()
    assert row is not None
    return DeadLetter(**row)


def get(conn: psycopg.Connection, dead_letter_id: int, *, lock: bool = False) -> DeadLetter | None:
    """The letter, or None; ``lock`` holds its row until the transaction ends, against a concurrent change."""
    with wrap_errors():
        row = conn.execute(_GET_FOR_UPDATE if lock else _GET, {"id": dead_letter_id}).fetchone()
    return DeadLetter(**row) if row else None


def list_pending(conn: psycopg.Connection, limit: int = 100, after: int = 0) -> list[DeadLetter]:
    """Pending dead letters (neither replayed nor discarded), oldest first; page with ``after`` = the last
    id seen."""
    with wrap_errors():
        rows = conn.execute(_LIST_PENDING, {"limit": limit, "after": after}).fetchall()
    return [DeadLetter(**row) for row in rows]


def mark_replayed(conn: psycopg.Connection, dead_letter_id: int) -> DeadLetter | None:
    """Mark a pending dead letter replayed; None if it was not pending (replayed, discarded or unknown)."""
    with wrap_errors():
        row = conn.execute(_MARK_REPLAYED, {"id": dead_letter_id}).fetchone()
    return DeadLetter(**row) if row else None


def reopen(conn: psycopg.Connection, dead_letter_id: int) -> bool:
    """Make a replayed dead letter pending again (its task could not be enqueued); whether it was replayed."""
    with wrap_errors():
        return conn.execute(_REOPEN, {"id": dead_letter_id}).fetchone() is not None


def pending_for(conn: psycopg.Connection, task_name: str, message_id: int) -> DeadLetter | None:
    """The pending letter of ``task_name`` for ``message_id`` (at most one: dead_letters_one_pending)."""
    with wrap_errors():
        row = conn.execute(_PENDING_FOR, {"task_name": task_name, "message_id": message_id}).fetchone()
    return DeadLetter(**row) if row else None


def mark_discarded(conn: psycopg.Connection, dead_letter_id: int, reason: str) -> DeadLetter | None:
    """Mark a pending dead letter discarded for ``reason``; None if it was not pending.

    Only the letter changes: its task is not enqueued and its message keeps its status.
    """
    with wrap_errors():
        row = conn.execute(_MARK_DISCARDED, {"id": dead_letter_id, "reason": reason}).fetchone()
    return DeadLetter(**row) if row else None


# --- what `wapipe dlq list` shows: each pending letter with its message's recipient ---------------------

_LIST_PENDING_WITH_RECIPIENT = """
SELECT d.id, d.task_name, d.message_id, d.payload, d.error, d.attempts, d.created_at, d.replayed_at,
       d.discarded_at, d.discard_reason, c.phone AS recipient
FROM dead_letters d
LEFT JOIN messages m ON m.id = d.message_id
LEFT JOIN contacts c ON c.id = m.contact_id
WHERE d.replayed_at IS NULL AND d.discarded_at IS NULL AND d.id > %(after)s
ORDER BY d.id LIMIT %(limit)s
"""


@dataclass(frozen=True)
class PendingLetter:
    letter: DeadLetter
    recipient: str | None  # E.164 of the message's contact; mask before showing it


def list_pending_with_recipient(
    conn: psycopg.Connection, limit: int = 100, after: int = 0
) -> list[PendingLetter]:
    """:func:`list_pending` with each letter's recipient, in one query."""
    with wrap_errors():
        rows = conn.execute(_LIST_PENDING_WITH_RECIPIENT, {"limit": limit, "after": after}).fetchall()
    return [
        PendingLetter(DeadLetter(**{k: v for k, v in row.items() if k != "recipient"}), row["recipient"])
        for row in rows
    ]


# --- before replaying a handler stage's letter: is its message still worth answering? ------------------

# The message's age by the database's clock (the one that stamped it), and how many messages its sender
# has written to the same business number since (ids are assigned in arrival order): in any conversation,
# since a conversation closed meanwhile (idle, or by an operator) puts the user's resend in a new one.
# messages_contact (contact_id, id) finds the later ones.
_INBOUND_SINCE = """
SELECT now() - m.created_at AS age,
       (SELECT count(*) FROM messages l JOIN conversations lc ON lc.id = l.conversation_id
        WHERE l.contact_id = m.contact_id AND l.id > m.id AND l.direction = 'in'
          AND lc.business_number = c.business_number) AS later
FROM messages m LEFT JOIN conversations c ON c.id = m.conversation_id
WHERE m.id = %(id)s AND m.direction = 'in'
"""
# An event inbound.route gave up on before storing it: how long ago it was sent, and how many messages its
# sender has written to the same business number since, in any conversation: sent after it, by each
# message's own sent time (a message sent just before the event is often stored just after it was sent).
# The contact by its unique phone or BSUID, then messages_contact (contact_id, id).
_EVENT_SINCE = """
SELECT now() - %(sent_at)s AS age,
       (SELECT count(*) FROM contacts ct
        JOIN messages l ON l.contact_id = ct.id
        JOIN conversations lc ON lc.id = l.conversation_id
        WHERE (ct.phone = %(phone)s OR ct.bsuid = %(bsuid)s)
          AND l.direction = 'in'
          AND COALESCE((l.payload->>'sent_at')::timestamptz, l.created_at) > %(sent_at)s
          AND lc.business_number = %(business_number)s) AS later
"""
_STORED_EVENT = """
SELECT id FROM messages
WHERE provider = %(provider)s AND provider_message_id = %(provider_message_id)s AND direction = 'in'
"""
# An apology stored under the reply's own key (before apologies had a key of their own) moves to the
# apology's key, freeing the reply's for the replayed stage. Never the stage's real reply: matched on text.
_MOVE_APOLOGY = """
UPDATE messages SET idempotency_key = %(apology_key)s, updated_at = now()
WHERE idempotency_key = %(reply_key)s AND direction = 'out' AND body = %(apology)s
  AND NOT EXISTS (SELECT FROM messages a WHERE a.idempotency_key = %(apology_key)s)
"""


@dataclass(frozen=True)
class InboundSince:
    """How long ago an inbound message came, and how many its sender has sent since to the same number."""

    age: timedelta
    later: int


def inbound_since(conn: psycopg.Connection, message_id: int) -> InboundSince | None:
    """:class:`InboundSince` for inbound message ``message_id``; None when there is no such message."""
    with wrap_errors():
        row = conn.execute(_INBOUND_SINCE, {"id": message_id}).fetchone()
    return InboundSince(row["age"], row["later"]) if row else None


@dataclass(frozen=True)
class InboundEvent:
    """What identifies an event inbound.route was given, and when it was sent."""

    provider: str
    provider_message_id: str
    business_number: str
    phone: str | None
    bsuid: str | None
    sent_at: datetime


def event_since(conn: psycopg.Connection, event: InboundEvent) -> InboundSince:
    """:class:`InboundSince` for an event: by its stored message when the router stored it before it gave
    up (the message's own age and the messages after it), else by when it was sent."""
    with wrap_errors():
        stored = conn.execute(
            _STORED_EVENT, {"provider": event.provider, "provider_message_id": event.provider_message_id}
        ).fetchone()
        if stored is not None:
            since = inbound_since(conn, stored["id"])
            if since is not None:
                return since
        params = {
            "sent_at": event.sent_at,
            "phone": event.phone,
            "bsuid": event.bsuid,
            "business_number": event.business_number,
        }
        row = conn.execute(_EVENT_SINCE, params).fetchone()
    assert row is not None
    return InboundSince(row["age"], row["later"])


def move_apology_aside(conn: psycopg.Connection, *, reply_key: str, apology_key: str, apology: str) -> bool:
    """Move an apology stored under ``reply_key`` to ``apology_key``; True if there was one to move."""
    params = {"reply_key": reply_key, "apology_key": apology_key, "apology": apology}
    with wrap_errors():
        return conn.execute(_MOVE_APOLOGY, params).rowcount > 0
