"""Conversations: at most one live (open or handoff) conversation per contact and business number.

The partial unique index ``conversations_live`` is what makes get-or-create safe between worker
processes: the insert that loses the race does nothing, and both then read the same row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from shared.db.errors import wrap_errors

_COLUMNS = "id, contact_id, provider, business_number, status, started_at, last_message_at, closed_at"

_INSERT_IF_NONE_LIVE = """
INSERT INTO conversations (contact_id, provider, business_number)
VALUES (%(contact_id)s, %(provider)s, %(business_number)s)
ON CONFLICT (contact_id, provider, business_number) WHERE status <> 'closed' DO NOTHING
"""
_TOUCH_LIVE = f"""
UPDATE conversations SET last_message_at = GREATEST(last_message_at, now())
WHERE contact_id = %(contact_id)s AND provider = %(provider)s AND business_number = %(business_number)s
  AND status <> 'closed'
RETURNING {_COLUMNS}
"""  # noqa: S608 - constant column list and statuses, no input
_GET = f"SELECT {_COLUMNS} FROM conversations WHERE id = %(id)s"  # noqa: S608 - constant column list, no input

# Whether the bot may still answer in conversation {conversation_id} (a parameter or a column): open (not
# handed to a person, nor closed), its contact not opted out. Read again as late as the answer is stored,
# since a handoff, a close or a STOP can land while a handler works (workers/ai.py).
BOT_MAY_ANSWER = """EXISTS (
    SELECT FROM conversations bv JOIN contacts bc ON bc.id = bv.contact_id
    WHERE bv.id = {conversation_id} AND bv.status = 'open' AND NOT bc.opted_out
)"""
_BOT_MAY_ANSWER = f"SELECT {BOT_MAY_ANSWER.format(conversation_id='%(id)s')} AS may"


@dataclass(frozen=True)
class Conversation:
    id: int
    contact_id: int
    provider: str
    business_number: str
    status: str  # open | handoff | closed
    started_at: datetime
    last_message_at: datetime
    closed_at: datetime | None


def get_or_create_live(
    conn: psycopg.Connection, *, contact_id: int, provider: str, business_number: str
) -> Conversation:
    """The live conversation between the contact and our number, opened if there is none; touched."""
    params = {"contact_id": contact_id, "provider": provider, "business_number": business_number}
    with wrap_errors():
        conn.execute(_INSERT_IF_NONE_LIVE, params)
        row = conn.execute(_TOUCH_LIVE, params).fetchone()
    assert row is not None, "the live conversation was inserted or already existed"
    return Conversation(**row)


def get(conn: psycopg.Connection, conversation_id: int) -> Conversation | None:
    with wrap_errors():
        row = conn.execute(_GET, {"id": conversation_id}).fetchone()
    return Conversation(**row) if row else None


def bot_may_answer(conn: psycopg.Connection, conversation_id: int) -> bool:
    """See :data:`BOT_MAY_ANSWER`."""
    with wrap_errors():
        row = conn.execute(_BOT_MAY_ANSWER, {"id": conversation_id}).fetchone()
    return bool(row and row["may"])
