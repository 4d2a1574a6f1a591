"""Insert contacts, conversations and messages with chosen timestamps, for the API and stats tests.

Times are given as PostgreSQL intervals before ``now()`` ("3 hours"), so the data is always recent or old
relative to the moment the test runs, whatever the clock says.
"""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_ids = itertools.count(1)


def contact(
    db: psycopg.Connection, phone: str | None, *, bsuid: str | None = None, name: str | None = None
) -> int:
    sql = "INSERT INTO contacts (phone, bsuid, profile_name) VALUES (%s, %s, %s) RETURNING id"
    return db.execute(sql, (phone, bsuid, name)).fetchone()["id"]


def conversation(
    db: psycopg.Connection,
    contact_id: int,
    *,
    provider: str = "twilio",
    number: str = "+14155238886",
    status: str = "open",
    started: str = "1 day",
) -> int:
    sql = (
        "INSERT INTO conversations (contact_id, provider, business_number, status, started_at,"
        " last_message_at, closed_at) VALUES (%s, %s, %s, %s, now() - %s::interval, now() - %s::interval,"
        " CASE WHEN %s = 'closed' THEN now() END) RETURNING id"
    )
    return db.execute(sql, (contact_id, provider, number, status, started, started, status)).fetchone()["id"]


def message(
    db: psycopg.Connection,
    conversation_id: int | None,
    contact_id: int,
    direction: str,
    ago: str,
    *,
    provider: str = "twilio",
    body: str = "hello",
    status: str | None = None,
    media: list[dict[str, Any]] | None = None,
) -> int:
    sql = (
        "INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, body,"
        " media, status, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now() - %s::interval, now() - %s::interval) RETURNING id"
    )
    status = status or ("received" if direction == "in" else "sent")
    params = (
        conversation_id,
        contact_id,
        direction,
        provider,
        f"SM{next(_ids):032d}",
        body,
        Jsonb(media) if media is not None else None,
        status,
        ago,
        ago,
    )
    return db.execute(sql, params).fetchone()["id"]
