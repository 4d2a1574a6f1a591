"""Rows the flows tests need: a contact, its conversation, and inbound messages as the router stores them."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def make_conversation(db: psycopg.Connection, phone: str = "+15550100001") -> tuple[int, int]:
    """A contact and its open conversation: (contact_id, conversation_id)."""
    contact = db.execute("INSERT INTO contacts (phone) VALUES (%s) RETURNING id", (phone,)).fetchone()
    conversation = db.execute(
        "INSERT INTO conversations (contact_id, provider, business_number)"
        " VALUES (%s, 'twilio', '+15550009999') RETURNING id",
        (contact["id"],),
    ).fetchone()
    return contact["id"], conversation["id"]


def add_conversation(db: psycopg.Connection, contact_id: int, business_number: str) -> int:
    """Another open conversation of the contact: the same user writing to another of our numbers."""
    row = db.execute(
        "INSERT INTO conversations (contact_id, provider, business_number)"
        " VALUES (%s, 'twilio', %s) RETURNING id",
        (contact_id, business_number),
    ).fetchone()
    return row["id"]


def add_inbound(
    db: psycopg.Connection,
    contact_id: int,
    conversation_id: int,
    body: str | None,
    *,
    reply_id: str | None = None,
    routed: bool = True,
    type: str = "text",
    payload: dict[str, Any] | None = None,
) -> int:
    """Store an inbound message (a tapped button keeps its id in payload.reply, as inbound.route does)."""
    payload = dict(payload or {})
    if reply_id:
        payload["reply"] = {"id": reply_id, "title": body}
    row = db.execute(
        "INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, type,"
        " body, payload, status, routed_at) VALUES (%s, %s, 'in', 'twilio', %s, %s, %s, %s, 'received',"
        " CASE WHEN %s THEN now() END) RETURNING id",
        (conversation_id, contact_id, f"SM{uuid.uuid4().hex}", type, body, Jsonb(payload), routed),
    ).fetchone()
    return row["id"]
