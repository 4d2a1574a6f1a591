"""What the AI assistant reads of a conversation: its recent messages, an inbound message's provider id.

Read-only queries for ``workers/ai.py``'s ``ai.reply``; the rows themselves are written by the inbound and
notify paths (``messages.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from shared.db.errors import wrap_errors

# The newest messages up to and including the one being answered (later ones are not its context), both
# directions; outbound messages the user never received (failed, undelivered) are left out. Newest first
# here, so LIMIT keeps the last ones; the caller reverses them.
_RECENT = """
SELECT id, direction, type, body,
       CASE WHEN direction = 'in' THEN payload -> 'location' END AS location,
       CASE WHEN direction = 'in' THEN payload -> 'flow_reply' END AS flow_reply
FROM messages
WHERE conversation_id = %(conversation_id)s AND id <= %(upto_id)s
  AND NOT (direction = 'out' AND status IN ('failed', 'undelivered'))
ORDER BY id DESC
LIMIT %(limit)s
"""
_PROVIDER_ID = "SELECT provider_message_id FROM messages WHERE id = %(id)s"


@dataclass(frozen=True)
class ContextMessage:
    id: int
    direction: str  # in | out
    type: str
    body: str | None
    location: Any = None  # an inbound location's place, as workers/inbound.py stored it
    flow_reply: Any = None  # an inbound Flow reply's answers, likewise


def recent_messages(
    conn: psycopg.Connection, conversation_id: int, upto_id: int, limit: int
) -> list[ContextMessage]:
    """The conversation's last ``limit`` messages up to message ``upto_id``, oldest first."""
    with wrap_errors():
        rows = conn.execute(
            _RECENT, {"conversation_id": conversation_id, "upto_id": upto_id, "limit": limit}
        ).fetchall()
    return [ContextMessage(**row) for row in reversed(rows)]


def provider_message_id(conn: psycopg.Connection, message_id: int) -> str | None:
    """The provider's id of a stored message (Twilio ``SM...``, Meta ``wamid...``), None if unknown."""
    with wrap_errors():
        row = conn.execute(_PROVIDER_ID, {"id": message_id}).fetchone()
    return row["provider_message_id"] if row else None
