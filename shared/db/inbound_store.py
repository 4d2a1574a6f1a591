"""The router's store in one statement: an inbound message, its contact and conversation, and what
deciding its route needs (workers/inbound.py).

One round trip instead of a dozen: the lookup of the provider id (stored before?), the contact refreshed
(:data:`shared.db.contacts.REFRESH_KNOWN`) or created, its live conversation touched or opened, the
message insert (unique on provider + provider id), the raw event log, and the sender's opt-out, link and
whether the number has its own assistant. The data-modifying CTEs feed each other (the conversation comes
from the contact, the message from the conversation), so the contact row is locked before the message
takes its id: the stores of one contact stay serialised in id order (shared/db/turns.py).

What the statement cannot do alone it reports instead of guessing, and the caller takes the general path
(shared/db/contacts.py, conversations.py, messages.py) in the same transaction: when a contact or a live
conversation was created by a transaction that committed after this statement's snapshot was taken, and
when a number changes hands (the sender's contact has another number, or another WhatsApp account's
contact holds the message's), which unlinks numbers (:func:`shared.db.contacts.upsert_from_inbound`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from shared.db.contacts import REFRESH_KNOWN, WROTE_AT
from shared.db.errors import wrap_errors

# One row, always: the LEFT JOINs from a single-row seed keep it even when a CTE returned nothing.
# ``existing`` reads the statement's snapshot, so a row a concurrent route inserted and has not committed
# is not in it: the insert then waits for that commit and does nothing (a concurrent duplicate). The
# inserts of a new contact or conversation run only when the update found none (NOT EXISTS on its
# RETURNING); one that conflicts with a row committed after the snapshot (two first messages of a new
# sender racing) returns nothing, and the caller's general path, statement by statement, sees that row.
# A number changing hands leaves known_contact empty too (REFRESH_KNOWN), and the insert then conflicts on
# the sender's business-scoped id or on the number: nothing is stored, for the general path.
_STORE = f"""
WITH existing AS (
    SELECT id, routed_at FROM messages
    WHERE provider = %(provider)s AND provider_message_id = %(provider_message_id)s
),
known_contact AS ({REFRESH_KNOWN}),
new_contact AS (
    INSERT INTO contacts (phone, bsuid, profile_name, last_inbound_at)
    SELECT %(phone)s, %(bsuid)s, %(profile_name)s, {WROTE_AT}
    WHERE NOT EXISTS (SELECT 1 FROM known_contact)
    ON CONFLICT DO NOTHING
    RETURNING id, phone, bsuid, opted_out
),
contact AS (
    SELECT id, phone, bsuid, opted_out FROM known_contact
    UNION ALL
    SELECT id, phone, bsuid, opted_out FROM new_contact
),
live_conversation AS (
    UPDATE conversations v SET last_message_at = GREATEST(v.last_message_at, now())
    FROM contact c
    WHERE v.contact_id = c.id AND v.provider = %(provider)s AND v.business_number = %(business_number)s
      AND v.status <> 'closed'
    RETURNING v.id, v.contact_id, v.status
),
new_conversation AS (
    INSERT INTO conversations (contact_id, provider, business_number)
    SELECT c.id, %(provider)s, %(business_number)s FROM contact c
    WHERE NOT EXISTS (SELECT 1 FROM live_conversation)
    ON CONFLICT (contact_id, provider, business_number) WHERE status <> 'closed' DO NOTHING
    RETURNING id, contact_id, status
),
conversation AS (
    SELECT id, contact_id, status FROM live_conversation
    UNION ALL
    SELECT id, contact_id, status FROM new_conversation
),
message AS (
    INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, type,
                          body, payload, media, status)
    SELECT v.id, v.contact_id, 'in', %(provider)s, %(provider_message_id)s, %(type)s, %(body)s,
           %(payload)s, %(media)s, 'received'
    FROM conversation v
    ON CONFLICT (provider, provider_message_id) DO NOTHING
    RETURNING id
),
logged AS (
    INSERT INTO webhook_events (provider, event_key, kind, body)
    SELECT %(provider)s, %(event_key)s, 'message', %(event)s FROM message
)
SELECT e.id AS existing_id, e.routed_at IS NOT NULL AS existing_routed,
       m.id AS message_id, c.id AS contact_id, c.phone, c.bsuid, c.opted_out,
       v.id AS conversation_id, v.status AS conversation_status, l.user_id,
       EXISTS (SELECT 1 FROM assistant_configs a WHERE a.business_number = %(business_number)s)
           AS assistant_number
FROM (VALUES (1)) AS seed (one)
LEFT JOIN existing e ON true
LEFT JOIN contact c ON true
LEFT JOIN conversation v ON true
LEFT JOIN message m ON true
LEFT JOIN user_links l ON l.phone = c.phone
"""  # noqa: S608 - constant SQL text composed from constants, no input


@dataclass(frozen=True)
class Stored:
    """What the statement did, read in this order: ``existing_id`` set: stored before (roll back: the
    contact refresh is for new messages only); ``message_id`` set: stored now, with its sender's facts;
    ``conversation_id`` set: a concurrent route stored it first; else the contact or the conversation
    was created concurrently (see :data:`_STORE`), for the general path."""

    existing_id: int | None
    existing_routed: bool
    message_id: int | None
    contact_id: int | None
    phone: str | None
    bsuid: str | None
    opted_out: bool | None
    conversation_id: int | None
    conversation_status: str | None
    user_id: UUID | None
    assistant_number: bool


def store(
    conn: psycopg.Connection,
    *,
    provider: str,
    provider_message_id: str,
    business_number: str,
    phone: str | None,
    bsuid: str | None,
    profile_name: str | None,
    sent_at: datetime,
    type: str,
    body: str | None,
    payload: dict[str, Any],
    media: list[dict[str, Any]] | None,
    event_key: str,
    event: dict[str, Any],
) -> Stored:
    """Run the statement inside the caller's transaction; see :class:`Stored` for what to do next.

    ``sent_at``: when the user sent the message, which opens the contact's 24-hour window
    (:data:`shared.db.contacts.WROTE_AT`)."""
    if not phone and not bsuid:
        raise ValueError("an inbound message needs a sender phone or business-scoped user id")
    params = {
        "provider": provider,
        "provider_message_id": provider_message_id,
        "business_number": business_number,
        "phone": phone,
        "bsuid": bsuid,
        "profile_name": profile_name,
        "sent_at": sent_at,
        "type": type,
        "body": body,
        "payload": Jsonb(payload),
        "media": Jsonb(media) if media else None,
        "event_key": event_key,
        "event": Jsonb(event),
    }
    with wrap_errors():
        row = conn.execute(_STORE, params).fetchone()
    assert row is not None, "the seed row is always there"
    return Stored(**row)
