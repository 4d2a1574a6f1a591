"""Messages in both directions, and the timeline of an outbound message's delivery.

Inbound rows are unique on (provider, provider message id), which is what makes a redelivered webhook or
route task produce one effect. Outbound rows are unique on their idempotency key (``reply:<inbound id>``
or an API caller's key) and move through ``queued -> sending -> sent -> delivered -> read`` (or
``failed`` / ``undelivered``, final), never backwards: see :func:`apply_status`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from shared.db.errors import NotFound, wrap_errors
from shared.db.pool import connection
from shared.wire.events import STATUS_RANK, DeliveryStatus

# notify.send's claim: the provider call is in flight (see workers/notify.py). Ranked with 'queued', so a
# receipt can never be overtaken by it.
SENDING = "sending"


def _rank_sql(column: str) -> str:
    """SQL for the forward-only rank of a status column; one source of truth: ``STATUS_RANK``."""
    cases = " ".join(f"WHEN '{status.value}' THEN {rank}" for status, rank in STATUS_RANK.items())
    return f"(CASE {column} {cases} ELSE 0 END)"


# --- inbound -------------------------------------------------------------------------------------------

_FIND_BY_PROVIDER_ID = """
SELECT id, direction, routed_at FROM messages
WHERE provider = %(provider)s AND provider_message_id = %(provider_message_id)s
"""
_INSERT_INBOUND = """
INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, type, body,
                      payload, media, status)
VALUES (%(conversation_id)s, %(contact_id)s, 'in', %(provider)s, %(provider_message_id)s, %(type)s,
        %(body)s, %(payload)s, %(media)s, 'received')
ON CONFLICT (provider, provider_message_id) DO NOTHING
RETURNING id
"""
_MARK_ROUTED = "UPDATE messages SET routed_at = now() WHERE id = %(id)s AND routed_at IS NULL"
_MARK_HANDLED = (
    "UPDATE messages SET handled_at = COALESCE(handled_at, now()), updated_at = now() WHERE id = %(id)s"
)
_LOG_WEBHOOK_EVENT = """
INSERT INTO webhook_events (provider, event_key, kind, body)
VALUES (%(provider)s, %(event_key)s, %(kind)s, %(body)s)
"""
_GET_INBOUND = """
SELECT m.id, m.conversation_id, m.contact_id, m.provider, v.business_number, c.phone, c.bsuid,
       c.profile_name, m.type, m.body, m.payload, l.user_id, m.created_at
FROM messages m
JOIN contacts c ON c.id = m.contact_id
LEFT JOIN conversations v ON v.id = m.conversation_id
LEFT JOIN user_links l ON l.phone = c.phone
WHERE m.id = %(id)s AND m.direction = 'in'
"""


@dataclass(frozen=True)
class InboundRecord:
    """A stored inbound message with who sent it, as the handler stages read it (INTERFACES.md)."""

    id: int
    conversation_id: int
    contact_id: int
    provider: str
    business_number: str
    phone: str | None  # E.164
    bsuid: str | None
    profile_name: str | None
    type: str
    body: str | None  # the text, or the title of the button / row tapped
    payload: dict[str, Any]
    user_id: UUID | None  # the linked user of the host application
    created_at: datetime

    @property
    def user_key(self) -> str:
        """The key sessions use: the E.164 phone, else the business-scoped id."""
        return self.phone or self.bsuid or f"contact:{self.contact_id}"


@dataclass(frozen=True)
class StoredInbound:
    id: int
    routed: bool


def find_by_provider_id(
    conn: psycopg.Connection, provider: str, provider_message_id: str
) -> StoredInbound | None:
    with wrap_errors():
        row = conn.execute(
            _FIND_BY_PROVIDER_ID, {"provider": provider, "provider_message_id": provider_message_id}
        ).fetchone()
    return StoredInbound(row["id"], row["routed_at"] is not None) if row else None


def insert_inbound(
    conn: psycopg.Connection,
    *,
    conversation_id: int,
    contact_id: int,
    provider: str,
    provider_message_id: str,
    type: str,
    body: str | None,
    payload: dict[str, Any],
    media: list[dict[str, Any]] | None,
) -> int | None:
    """Store an inbound message; None when (provider, provider message id) is already stored."""
    params = {
        "conversation_id": conversation_id,
        "contact_id": contact_id,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "type": type,
        "body": body,
        "payload": Jsonb(payload),
        "media": Jsonb(media) if media else None,
    }
    with wrap_errors():
        row = conn.execute(_INSERT_INBOUND, params).fetchone()
    return row["id"] if row else None


def log_webhook_event(
    conn: psycopg.Connection, *, provider: str, event_key: str, kind: str, body: dict[str, Any]
) -> None:
    """Keep the raw event in ``webhook_events`` (audits, replays; trimmed by the retention job)."""
    with wrap_errors():
        conn.execute(
            _LOG_WEBHOOK_EVENT,
            {"provider": provider, "event_key": event_key, "kind": kind, "body": Jsonb(body)},
        )


def mark_routed(conn: psycopg.Connection, message_id: int) -> None:
    with wrap_errors():
        conn.execute(_MARK_ROUTED, {"id": message_id})


def mark_handled(conn: psycopg.Connection, message_id: int) -> None:
    """A handler has answered the inbound message (kept for audits and the first-answer time)."""
    with wrap_errors():
        conn.execute(_MARK_HANDLED, {"id": message_id})


def get_inbound(message_id: int, conn: psycopg.Connection | None = None) -> InboundRecord:
    """The stored inbound message with its sender; raises ``NotFound``."""
    if conn is None:
        with connection() as own:
            return get_inbound(message_id, own)
    with wrap_errors():
        row = conn.execute(_GET_INBOUND, {"id": message_id}).fetchone()
    if row is None:
        raise NotFound(f"inbound message {message_id}")
    return InboundRecord(**{**row, "payload": row["payload"] or {}})


# --- outbound ------------------------------------------------------------------------------------------

_INSERT_OUTBOUND = """
INSERT INTO messages (conversation_id, contact_id, direction, provider, idempotency_key, request_hash,
                      type, body, payload, status, bypass_opt_out)
VALUES (%(conversation_id)s, %(contact_id)s, 'out', %(provider)s, %(idempotency_key)s, %(request_hash)s,
        %(type)s, %(body)s, %(payload)s, 'queued', %(bypass_opt_out)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""
_ID_BY_KEY = "SELECT id FROM messages WHERE idempotency_key = %(key)s"
_OUTBOUND_COLUMNS = """
m.id, m.conversation_id, m.contact_id, m.provider, m.provider_message_id, m.idempotency_key, m.type,
m.body, m.payload, m.status, m.error_code, m.error_message, m.attempts, m.bypass_opt_out, m.created_at,
m.updated_at, c.phone, c.bsuid, c.opted_out, v.provider AS conversation_provider,
v.business_number, c.last_inbound_at, m.send_after, m.claimed_by
"""
_GET_OUTBOUND = f"""
SELECT {_OUTBOUND_COLUMNS}
FROM messages m
LEFT JOIN contacts c ON c.id = m.contact_id
LEFT JOIN conversations v ON v.id = m.conversation_id
WHERE m.id = %(id)s AND m.direction = 'out'
"""  # noqa: S608 - constant column list and statuses, no input
# The claim that makes two deliveries of one notify.send task send once: only one UPDATE can move the row
# out of 'queued'; the other finds it 'sending' (or done) and stands back.
_CLAIM = f"""
WITH claimed AS (
    UPDATE messages SET status = '{SENDING}', attempts = attempts + 1, updated_at = now(),
        claimed_by = id, send_after = NULL
    WHERE id = %(id)s AND direction = 'out' AND status = 'queued'
    RETURNING *
)
SELECT {_OUTBOUND_COLUMNS}
FROM claimed m
LEFT JOIN contacts c ON c.id = m.contact_id
LEFT JOIN conversations v ON v.id = m.conversation_id
"""  # noqa: S608 - constant column list and statuses, no input
_MARK_SENT = f"""
UPDATE messages SET status = 'sent', provider = %(provider)s, provider_message_id = %(provider_message_id)s,
    error_code = NULL, error_message = NULL, updated_at = now()
WHERE id = %(id)s AND status = '{SENDING}'
RETURNING id
"""  # noqa: S608 - constant column list and statuses, no input
_RELEASE = f"""
UPDATE messages SET status = 'queued', error_code = %(error_code)s, error_message = %(error_message)s,
    updated_at = now(), send_after = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s AND status = '{SENDING}'
RETURNING id
"""  # noqa: S608 - constant column list and statuses, no input
_MARK_FAILED = f"""
UPDATE messages SET status = 'failed', error_code = %(error_code)s, error_message = %(error_message)s,
    updated_at = now()
WHERE id = %(id)s AND status IN ('queued', '{SENDING}')
RETURNING id
"""  # noqa: S608 - constant column list and statuses, no input
_REQUEUE = """
UPDATE messages SET status = 'queued', attempts = 0, error_code = NULL, error_message = NULL,
    updated_at = now()
WHERE id = %(id)s AND direction = 'out' AND status = 'failed'
RETURNING id
"""
_SECONDS_SINCE_UPDATE = (
    "SELECT extract(epoch FROM now() - updated_at)::float AS age FROM messages WHERE id = %(id)s"
)


@dataclass(frozen=True)
class OutboundRecord:
    """An outbound message with its recipient, as notify.send reads it."""

    id: int
    conversation_id: int | None
    contact_id: int | None
    provider: str
    provider_message_id: str | None
    idempotency_key: str | None
    type: str
    body: str | None
    payload: dict[str, Any]
    status: str
    error_code: str | None
    error_message: str | None
    attempts: int
    bypass_opt_out: bool
    created_at: datetime
    updated_at: datetime
    phone: str | None
    bsuid: str | None
    opted_out: bool | None
    conversation_provider: str | None
    business_number: str | None
    last_inbound_at: datetime | None  # the contact's, for WhatsApp's 24-hour window (shared/policy.py)
    send_after: datetime | None = None  # not before (backoff, pacing): batch claims skip it until then
    claimed_by: int | None = None  # whose notify.send task made the current 'sending' claim


def _outbound(row: dict[str, Any]) -> OutboundRecord:
    return OutboundRecord(**{**row, "payload": row["payload"] or {}})


def insert_outbound(
    conn: psycopg.Connection,
    *,
    idempotency_key: str,
    provider: str,
    contact_id: int | None,
    conversation_id: int | None,
    type: str,
    body: str | None,
    payload: dict[str, Any] | None = None,
    request_hash: str | None = None,
    bypass_opt_out: bool = False,
) -> tuple[int, bool]:
    """Store an outbound message as ``queued``; return (its id, whether it is new).

    The same idempotency key twice stores nothing new and returns the first message's id, so a redelivered
    task or a retried API call never queues a second message.
    """
    params = {
        "idempotency_key": idempotency_key,
        "provider": provider,
        "contact_id": contact_id,
        "conversation_id": conversation_id,
        "type": type,
        "body": body,
        "payload": Jsonb(payload or {}),
        "request_hash": request_hash,
        "bypass_opt_out": bypass_opt_out,
    }
    with wrap_errors():
        row = conn.execute(_INSERT_OUTBOUND, params).fetchone()
        if row is not None:
            add_event(conn, row["id"], "queued")
            return row["id"], True
        existing = conn.execute(_ID_BY_KEY, {"key": idempotency_key}).fetchone()
    assert existing is not None, "the conflicting row holds the key"
    return existing["id"], False


def get_outbound(conn: psycopg.Connection, message_id: int) -> OutboundRecord:
    """The outbound message with its recipient; raises ``NotFound``."""
    with wrap_errors():
        row = conn.execute(_GET_OUTBOUND, {"id": message_id}).fetchone()
    if row is None:
        raise NotFound(f"outbound message {message_id}")
    return _outbound(row)


def claim_for_sending(conn: psycopg.Connection, message_id: int) -> OutboundRecord | None:
    """Move a queued message to 'sending' (one attempt more); None if it was not queued."""
    with wrap_errors():
        row = conn.execute(_CLAIM, {"id": message_id}).fetchone()
    return _outbound(row) if row else None


def seconds_since_update(conn: psycopg.Connection, message_id: int) -> float:
    with wrap_errors():
        row = conn.execute(_SECONDS_SINCE_UPDATE, {"id": message_id}).fetchone()
    if row is None:
        raise NotFound(f"message {message_id}")
    return float(row["age"])


def mark_sent(conn: psycopg.Connection, message_id: int, provider: str, provider_message_id: str) -> bool:
    """Record the provider's id for a message being sent; append 'sent' to its timeline."""
    with wrap_errors():
        row = conn.execute(
            _MARK_SENT,
            {"id": message_id, "provider": provider, "provider_message_id": provider_message_id},
        ).fetchone()
        if row is not None:
            add_event(conn, message_id, "sent")
    return row is not None


def release_for_retry(
    conn: psycopg.Connection,
    message_id: int,
    error_code: str | None,
    error_message: str | None,
    delay_seconds: float = 0.0,
) -> bool:
    """A transient failure: back to 'queued' (the error kept for operators) for the next attempt, due
    in ``delay_seconds`` (batch claims leave it alone until then)."""
    params = {"id": message_id, "error_code": error_code, "error_message": error_message}
    with wrap_errors():
        row = conn.execute(_RELEASE, params | {"delay": delay_seconds}).fetchone()
        if row is not None:
            add_event(conn, message_id, "retrying", error_code=error_code, detail=error_message)
    return row is not None


def mark_failed(
    conn: psycopg.Connection, message_id: int, error_code: str | None, error_message: str | None
) -> bool:
    """Final failure before or while sending: 'failed' with the reason, and a timeline entry."""
    with wrap_errors():
        row = conn.execute(
            _MARK_FAILED, {"id": message_id, "error_code": error_code, "error_message": error_message}
        ).fetchone()
        if row is not None:
            add_event(conn, message_id, "failed", error_code=error_code, detail=error_message)
    return row is not None


def requeue_failed(conn: psycopg.Connection, message_id: int) -> bool:
    """Dead-letter replay: a failed outbound message becomes queued again with a fresh attempt budget."""
    with wrap_errors():
        row = conn.execute(_REQUEUE, {"id": message_id}).fetchone()
        if row is not None:
            add_event(conn, message_id, "queued", detail="replayed")
    return row is not None


# --- notify's batches (workers/notify.py) ---------------------------------------------------------------

# What a notify.send task needs to decide in one look: go ahead, stand back, or come back later.
_SEND_STATE = """
SELECT status, claimed_by, extract(epoch FROM now() - updated_at)::float AS age,
       extract(epoch FROM send_after - now())::float AS due_in
FROM messages WHERE id = %(id)s AND direction = 'out'
"""
# The task's own message first (nothing else is claimed unless it is), then up to %(more)s other queued
# messages that are due, oldest first. SKIP LOCKED: two claimers never wait on, or take, the same row; the
# status moving out of 'queued' is what makes each message's send once-only, as with a single claim.
_CLAIM_BATCH = f"""
WITH own AS (
    UPDATE messages SET status = '{SENDING}', attempts = attempts + 1, updated_at = now(),
        claimed_by = id, send_after = NULL
    WHERE id = %(id)s AND direction = 'out' AND status = 'queued'
    RETURNING *
), picked AS (
    SELECT id FROM messages
    WHERE EXISTS (SELECT 1 FROM own) AND direction = 'out' AND status = 'queued' AND id <> %(id)s
      AND (send_after IS NULL OR send_after <= now())
    ORDER BY id
    LIMIT %(more)s
    FOR UPDATE SKIP LOCKED
), others AS (
    UPDATE messages m SET status = '{SENDING}', attempts = m.attempts + 1, updated_at = now(),
        claimed_by = %(id)s, send_after = NULL
    FROM picked WHERE m.id = picked.id
    RETURNING m.*
)
SELECT {_OUTBOUND_COLUMNS}
FROM (SELECT * FROM own UNION ALL SELECT * FROM others) m
LEFT JOIN contacts c ON c.id = m.contact_id
LEFT JOIN conversations v ON v.id = m.conversation_id
ORDER BY m.id <> %(id)s, m.id
"""  # noqa: S608 - constant column list and statuses, no input
_SENT_MANY = f"""
WITH done AS (
    UPDATE messages m SET status = 'sent', provider = v.provider, provider_message_id = v.provider_message_id,
        error_code = NULL, error_message = NULL, updated_at = now()
    FROM unnest(%(ids)s::bigint[], %(providers)s::text[], %(provider_message_ids)s::text[])
        AS v(id, provider, provider_message_id)
    WHERE m.id = v.id AND m.status = '{SENDING}'
    RETURNING m.id
)
INSERT INTO message_events (message_id, status) SELECT id, 'sent' FROM done
"""  # noqa: S608 - constant statuses, no input
_FAILED_MANY = f"""
WITH done AS (
    UPDATE messages m SET status = 'failed', error_code = v.code, error_message = v.text, updated_at = now()
    FROM unnest(%(ids)s::bigint[], %(codes)s::text[], %(texts)s::text[]) AS v(id, code, text)
    WHERE m.id = v.id AND m.status IN ('queued', '{SENDING}')
    RETURNING m.id, v.code, v.text
)
INSERT INTO message_events (message_id, status, error_code, detail)
SELECT id, 'failed', code, text FROM done
RETURNING message_id
"""  # noqa: S608 - constant statuses, no input
# Back to 'queued', due after the delay. A message never put to the provider (a pacing wait) gives its
# attempt back and keeps its last error; one that was tried records this error and a 'retrying' event.
_RELEASE_MANY = f"""
WITH done AS (
    UPDATE messages m SET status = 'queued',
        attempts = m.attempts - CASE WHEN v.tried THEN 0 ELSE 1 END,
        error_code = CASE WHEN v.tried THEN v.code ELSE m.error_code END,
        error_message = CASE WHEN v.tried THEN v.text ELSE m.error_message END,
        send_after = now() + make_interval(secs => v.delay), updated_at = now()
    FROM unnest(%(ids)s::bigint[], %(delays)s::float8[], %(tried)s::boolean[], %(codes)s::text[],
                %(texts)s::text[]) AS v(id, delay, tried, code, text)
    WHERE m.id = v.id AND m.status = '{SENDING}'
    RETURNING m.id, v.tried, v.code, v.text
)
INSERT INTO message_events (message_id, status, error_code, detail)
SELECT id, 'retrying', code, text FROM done WHERE tried
"""  # noqa: S608 - constant statuses, no input
# Claims whose worker died mid-call: the outcome at the provider is unknown (see workers/notify.py).
_ABANDONED = f"""
WITH done AS (
    UPDATE messages SET status = 'failed', error_code = %(code)s, error_message = %(text)s, updated_at = now()
    WHERE status = '{SENDING}' AND direction = 'out'
      AND updated_at < now() - make_interval(secs => %(lease)s)
      AND (%(claimer)s::bigint IS NULL OR claimed_by = %(claimer)s::bigint OR id = %(claimer)s::bigint)
    RETURNING id, attempts
), events AS (
    INSERT INTO message_events (message_id, status, error_code, detail)
    SELECT id, 'failed', %(code)s, %(text)s FROM done
)
SELECT id, attempts FROM done ORDER BY id
"""  # noqa: S608 - constant statuses, no input
# Queued messages well past due: their notify.send job was lost (a worker died between a commit and the
# publish that followed it). Re-enqueueing one that still has a job is harmless: the claim sends once.
_OVERDUE = """
SELECT id FROM messages
WHERE direction = 'out' AND status = 'queued'
  AND COALESCE(send_after, updated_at) < now() - make_interval(secs => %(grace)s)
ORDER BY id LIMIT %(limit)s
"""


@dataclass(frozen=True)
class SendState:
    """Where an outbound message stands, as a notify.send task first looks at it."""

    status: str
    claimed_by: int | None
    age: float  # seconds since its last change
    due_in: float | None  # seconds until its send_after; None or <= 0 when due


@dataclass(frozen=True)
class Release:
    """Put a claimed message back to 'queued', due in ``delay`` seconds."""

    id: int
    delay: float
    tried: bool  # the provider was called (and failed transiently); False for a pacing wait
    code: str | None = None
    text: str | None = None


def send_state(conn: psycopg.Connection, message_id: int) -> SendState | None:
    with wrap_errors():
        row = conn.execute(_SEND_STATE, {"id": message_id}).fetchone()
    return SendState(**row) if row else None


def claim_batch(conn: psycopg.Connection, message_id: int, more: int) -> list[OutboundRecord]:
    """Claim the message and up to ``more`` other due queued ones (``queued -> sending``, one attempt
    more each, ``claimed_by`` = ``message_id``); the message itself first. Empty if it was not queued."""
    with wrap_errors():
        rows = conn.execute(_CLAIM_BATCH, {"id": message_id, "more": max(0, more)}).fetchall()
    return [_outbound(row) for row in rows]


def settle_batch(
    conn: psycopg.Connection,
    *,
    sent: Sequence[tuple[int, str, str]] = (),
    failed: Sequence[tuple[int, str, str]] = (),
    released: Sequence[Release] = (),
) -> list[int]:
    """Record a batch's outcomes, one statement per kind: ``sent`` (id, provider, provider id),
    ``failed`` (id, code, reason; final), ``released`` (back to queued). Returns the ids failed now."""
    with wrap_errors():
        if sent:
            ids, providers, provider_ids = (list(column) for column in zip(*sent, strict=True))
            conn.execute(
                _SENT_MANY, {"ids": ids, "providers": providers, "provider_message_ids": provider_ids}
            )
        failed_now: list[int] = []
        if failed:
            ids, codes, texts = (list(column) for column in zip(*failed, strict=True))
            rows = conn.execute(_FAILED_MANY, {"ids": ids, "codes": codes, "texts": texts}).fetchall()
            failed_now = [row["message_id"] for row in rows]
        if released:
            conn.execute(
                _RELEASE_MANY,
                {
                    "ids": [r.id for r in released],
                    "delays": [max(0.0, r.delay) for r in released],
                    "tried": [r.tried for r in released],
                    "codes": [r.code for r in released],
                    "texts": [r.text for r in released],
                },
            )
    return failed_now


def fail_abandoned(
    conn: psycopg.Connection, *, lease_seconds: float, code: str, text: str, claimer: int | None = None
) -> list[tuple[int, int]]:
    """Fail the 'sending' claims older than the lease (only ``claimer``'s when given); (id, attempts)."""
    with wrap_errors():
        rows = conn.execute(
            _ABANDONED, {"lease": lease_seconds, "code": code, "text": text, "claimer": claimer}
        ).fetchall()
    return [(row["id"], row["attempts"]) for row in rows]


def overdue_queued(conn: psycopg.Connection, *, grace_seconds: float, limit: int = 1000) -> list[int]:
    """Queued outbound messages due for longer than ``grace_seconds`` (their job may have been lost)."""
    with wrap_errors():
        rows = conn.execute(_OVERDUE, {"grace": grace_seconds, "limit": limit}).fetchall()
    return [row["id"] for row in rows]


# --- delivery receipts ---------------------------------------------------------------------------------

_FIND_FOR_STATUS = """
SELECT id, status FROM messages
WHERE provider = %(provider)s AND provider_message_id = %(provider_message_id)s
"""
# Forward only, in one statement: PostgreSQL re-checks the WHERE on the locked row, so two receipts racing
# each other can only ever leave the higher-ranked status.
_ADVANCE = f"""
UPDATE messages SET status = %(status)s,
    error_code = COALESCE(%(error_code)s, error_code),
    error_message = COALESCE(%(error_message)s, error_message),
    updated_at = now()
WHERE id = %(id)s AND {_rank_sql("status")} < %(rank)s
RETURNING id
"""  # noqa: S608 - constant column list and statuses, no input
_ADD_EVENT = """
INSERT INTO message_events (message_id, status, error_code, detail, at)
VALUES (%(message_id)s, %(status)s, %(error_code)s, %(detail)s, COALESCE(%(at)s, now()))
"""
_TIMELINE = """
SELECT status, error_code, detail, at FROM message_events WHERE message_id = %(message_id)s ORDER BY at, id
"""


@dataclass(frozen=True)
class StatusApplied:
    message_id: int
    changed: bool  # False when the receipt was older than what we already knew (still in the timeline)


def apply_status(
    conn: psycopg.Connection,
    *,
    provider: str,
    provider_message_id: str,
    status: DeliveryStatus,
    error_code: str | None = None,
    error_message: str | None = None,
    at: datetime | None = None,
) -> StatusApplied | None:
    """Apply a delivery receipt; None when no message has that provider id (yet)."""
    with wrap_errors():
        row = conn.execute(
            _FIND_FOR_STATUS, {"provider": provider, "provider_message_id": provider_message_id}
        ).fetchone()
        if row is None:
            return None
        message_id = row["id"]
        changed = False
        rank = STATUS_RANK.get(status)
        if rank is not None:
            changed = (
                conn.execute(
                    _ADVANCE,
                    {
                        "id": message_id,
                        "status": status.value,
                        "rank": rank,
                        "error_code": error_code,
                        "error_message": error_message,
                    },
                ).fetchone()
                is not None
            )
        add_event(conn, message_id, status.value, error_code=error_code, detail=error_message, at=at)
    return StatusApplied(message_id, changed)


def add_event(
    conn: psycopg.Connection,
    message_id: int,
    status: str,
    *,
    error_code: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> None:
    with wrap_errors():
        conn.execute(
            _ADD_EVENT,
            {
                "message_id": message_id,
                "status": status,
                "error_code": error_code,
                "detail": detail,
                "at": at,
            },
        )


def timeline(conn: psycopg.Connection, message_id: int) -> list[dict[str, Any]]:
    """The message's delivery events, oldest first (by when they happened, not when they arrived)."""
    with wrap_errors():
        return conn.execute(_TIMELINE, {"message_id": message_id}).fetchall()


# --- the notify API's idempotency and inbound media (workers/media.py) ---------------------------------

_BY_KEY = """
SELECT id, request_hash, status, error_code FROM messages
WHERE idempotency_key = %(key)s AND direction = 'out'
"""
_GET_MEDIA = """
SELECT m.id, m.provider, v.business_number, m.media FROM messages m
LEFT JOIN conversations v ON v.id = m.conversation_id
WHERE m.id = %(id)s AND m.direction = 'in'
"""
_SET_MEDIA = "UPDATE messages SET media = %(media)s, updated_at = now() WHERE id = %(id)s"


@dataclass(frozen=True)
class KeyedOutbound:
    """What an idempotency key was first used for."""

    id: int
    request_hash: str | None
    status: str
    error_code: str | None


def find_outbound_by_key(conn: psycopg.Connection, key: str) -> KeyedOutbound | None:
    with wrap_errors():
        row = conn.execute(_BY_KEY, {"key": key}).fetchone()
    return KeyedOutbound(**row) if row else None


@dataclass(frozen=True)
class InboundMedia:
    id: int
    provider: str
    business_number: str | None
    media: list[dict[str, Any]]


def get_inbound_media(conn: psycopg.Connection, message_id: int) -> InboundMedia:
    """The media entries recorded on an inbound message; raises ``NotFound``."""
    with wrap_errors():
        row = conn.execute(_GET_MEDIA, {"id": message_id}).fetchone()
    if row is None:
        raise NotFound(f"inbound message {message_id}")
    media = row["media"] if isinstance(row["media"], list) else []
    return InboundMedia(row["id"], row["provider"], row["business_number"], media)


def set_inbound_media(conn: psycopg.Connection, message_id: int, media: list[dict[str, Any]]) -> None:
    with wrap_errors():
        conn.execute(_SET_MEDIA, {"id": message_id, "media": Jsonb(media)})
