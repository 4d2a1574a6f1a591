"""Read side of conversations and messages for the API, plus closing a conversation from it.

Lists page by id (keyset pagination): a page is ``WHERE id < cursor`` (conversations, newest first) or
``WHERE id > cursor`` (a conversation's messages, oldest first), so a page costs the same however deep the
caller has scrolled and rows arriving meanwhile never shift or repeat entries. One limit: an id is taken
when a row is inserted, not when it commits, so at the live end of a list a row can become visible after
a later one has (a message stored in a transaction still open when its reply committed). A client that
follows a conversation as it happens reads again from a cursor a little behind its last one (the OpenAPI
description of the messages listing says so); likewise a conversation can become visible after a newer
one was listed, so a client keeping a copy reads back past the first one it knows (the conversations
listing's description). Ordering by ``last_message_at`` instead would be worse: a conversation touched
between two pages would jump ahead of the cursor and be missed although it was there all along. Writes
on the inbound path live in ``conversations.py`` / ``messages.py``; this module only adds the API's close.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from shared.db.errors import wrap_errors

# The contact is joined in so a list row says who the conversation is with without a second request.
_LIST_CONVERSATIONS = """
SELECT c.id, c.status, c.provider, c.business_number, c.started_at, c.last_message_at, c.closed_at,
       c.contact_id, k.phone AS contact_phone, k.bsuid AS contact_bsuid,
       k.profile_name AS contact_name
FROM conversations c JOIN contacts k ON k.id = c.contact_id
WHERE (%(before)s::bigint IS NULL OR c.id < %(before)s)
  AND (%(status)s::text IS NULL OR c.status = %(status)s)
  AND (%(provider)s::text IS NULL OR c.provider = %(provider)s)
  AND (%(phone)s::text IS NULL OR k.phone = %(phone)s)
ORDER BY c.id DESC
LIMIT %(limit)s
"""
_EXISTS = "SELECT 1 FROM conversations WHERE id = %(id)s"
# A location's place and a Flow reply's answers are in an inbound message's payload (workers/inbound.py);
# an outbound payload holds what we sent, never these.
_LIST_MESSAGES = """
SELECT id, direction, provider, provider_message_id, type, body, media, status, error_code,
       error_message, created_at, updated_at,
       CASE WHEN direction = 'in' THEN payload -> 'location' END AS location,
       CASE WHEN direction = 'in' THEN payload -> 'flow_reply' END AS flow_reply
FROM messages
WHERE conversation_id = %(conversation_id)s AND id > %(after)s
ORDER BY id
LIMIT %(limit)s
"""
# Idempotent: closing a closed conversation keeps its first closed_at. Closing a 'handoff' conversation
# also gives it back to the bot: the contact's next message opens a new (open) conversation.
_CLOSE = """
UPDATE conversations SET status = 'closed', closed_at = COALESCE(closed_at, now())
WHERE id = %(id)s
RETURNING id, status, provider, business_number, started_at, last_message_at, closed_at, contact_id
"""


@dataclass(frozen=True)
class ConversationRow:
    id: int
    status: str
    provider: str
    business_number: str
    started_at: datetime
    last_message_at: datetime
    closed_at: datetime | None
    contact_id: int
    contact_phone: str | None
    contact_bsuid: str | None
    contact_name: str | None


@dataclass(frozen=True)
class MessageRow:
    id: int
    direction: str  # in | out
    provider: str
    provider_message_id: str | None
    type: str
    body: str | None
    media: Any
    status: str
    error_code: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    location: Any  # the payload's JSON as stored; the API picks its fields
    flow_reply: Any


def list_conversations(
    conn: psycopg.Connection,
    *,
    status: str | None = None,
    provider: str | None = None,
    phone: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[ConversationRow]:
    """Conversations newest first, filtered; ``before`` is the last id of the previous page."""
    params = {"status": status, "provider": provider, "phone": phone, "before": before, "limit": limit}
    with wrap_errors():
        rows = conn.execute(_LIST_CONVERSATIONS, params).fetchall()
    return [ConversationRow(**row) for row in rows]


def conversation_exists(conn: psycopg.Connection, conversation_id: int) -> bool:
    with wrap_errors():
        return conn.execute(_EXISTS, {"id": conversation_id}).fetchone() is not None


def list_messages(
    conn: psycopg.Connection, conversation_id: int, *, after: int = 0, limit: int = 50
) -> list[MessageRow]:
    """A conversation's messages in both directions, oldest first; ``after`` is the last id seen."""
    params = {"conversation_id": conversation_id, "after": after, "limit": limit}
    with wrap_errors():
        rows = conn.execute(_LIST_MESSAGES, params).fetchall()
    return [MessageRow(**row) for row in rows]


def close_conversation(conn: psycopg.Connection, conversation_id: int) -> dict[str, Any] | None:
    """Close the conversation (open or handoff); closing it again changes nothing. None if unknown."""
    with wrap_errors():
        return conn.execute(_CLOSE, {"id": conversation_id}).fetchone()
