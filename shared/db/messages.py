"""Messages in both directions, and the timeline of an outbound message's delivery.

Inbound rows are unique on (provider, provider message id), which is what makes a redelivered webhook or
route task produce one effect. Outbound rows are unique on their idempotency key (``reply:<inbound id>``
or an API caller's key) and move through ``queued -> sending -> sent -> delivered -> read`` (or
``failed`` / ``undelivered``, final), never backwards: see :func:`apply_status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from shared.db.errors import NotFound, wrap_errors
from shared.db.pool import connection
from shared.logging import redact_verify_codes
from shared.wire.events import STATUS_RANK

# notify.send's claim: the provider call is in flight (see workers/notify.py). Ranked with 'queued', so a
# receipt can never be overtaken by it.
SENDING = "sending"


# --- inbound -------------------------------------------------------------------------------------------

_INSERT_INBOUND = """
INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, type, body,
                      payload, media, status)
VALUES (%(conversation_id)s, %(contact_id)s, 'in', %(provider)s, %(provider_message_id)s, %(type)s,
        %(body)s, %(payload)s, %(media)s, 'received')
ON CONFLICT (provider, provider_message_id) DO NOTHING
RETURNING id
"""
_MARK_ROUTED = "UPDATE messages SET routed_at = now() WHERE id = %(id)s AND routed_at IS NULL"
# What recording an inbound message as handled sets: here and, in the statement that stores the reply,
# shared/db/answers.py. The first answer's time is kept.
HANDLED_SET = "handled_at = COALESCE(handled_at, now()), updated_at = now()"
_MARK_HANDLED = f"UPDATE messages SET {HANDLED_SET} WHERE id = %(id)s"  # noqa: S608 - constant, no input
_LOG_WEBHOOK_EVENT = """
INSERT INTO webhook_events (provider, event_key, kind, body)
VALUES (%(provider)s, %(event_key)s, %(kind)s, %(body)s)
"""
# An inbound message with its sender, as InboundRecord holds it; also the first read of a handler
# (shared/db/answers.py). On ``me``, the alias under which shared.db.turns.AHEAD_OF_ME reads its message.
INBOUND_COLUMNS = """
me.id, me.conversation_id, me.contact_id, me.provider, v.business_number, c.phone, c.bsuid,
c.profile_name, me.type, me.body, me.payload, l.user_id, me.created_at
"""
INBOUND_FROM = """
FROM messages me
JOIN contacts c ON c.id = me.contact_id
LEFT JOIN conversations v ON v.id = me.conversation_id
LEFT JOIN user_links l ON l.phone = c.phone
"""
_GET_INBOUND = f"""
SELECT {INBOUND_COLUMNS}
{INBOUND_FROM}
WHERE me.id = %(id)s AND me.direction = 'in'
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

    @property
    def sent_from(self) -> str | None:
        """The number (E.164) the message came from, kept with it; for one stored without it (an earlier
        release, or a sender known by business-scoped id alone), its contact's number."""
        return self.payload.get("sender_phone") or self.phone


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


_INBOUND_TEXT = "SELECT body, payload FROM messages WHERE id = %(id)s AND direction = 'in'"
_REWRITE_INBOUND_TEXT = """
UPDATE messages SET body = %(body)s, payload = %(payload)s, updated_at = now()
WHERE id = %(id)s AND direction = 'in'
"""


def redact_verify_code(conn: psycopg.Connection, message_id: int) -> None:
    """Replace the code of the ``VERIFY 123456`` in inbound message ``message_id`` (its text, and its typed
    content) with ``[redacted]``, as the logs redact it. Codes are stored hashed only: once the verify stage
    has checked the code, no copy of it is kept. Call it with the message's row locked."""
    with wrap_errors():
        row = conn.execute(_INBOUND_TEXT, {"id": message_id}).fetchone()
        if row is None:
            return
        body, payload = redact_verify_codes(row["body"]), redact_verify_codes(row["payload"])
        if (body, payload) != (row["body"], row["payload"]):
            conn.execute(_REWRITE_INBOUND_TEXT, {"id": message_id, "body": body, "payload": Jsonb(payload)})


def log_webhook_event(
    conn: psycopg.Connection, *, provider: str, event_key: str, kind: str, body: dict[str, Any]
) -> None:
    """Keep the raw event in ``webhook_events`` (audits, replays; trimmed by the retention job)."""
    with wrap_errors():
        conn.execute(
            _LOG_WEBHOOK_EVENT,
            {"provider": provider, "event_key": event_key, "kind": kind, "body": Jsonb(body)},
        )


def stored_provider_ids(conn: psycopg.Connection, provider: str, provider_message_ids: list[str]) -> set[str]:
    """Which of these provider message ids are stored (the unique index on provider + provider id)."""
    with wrap_errors():
        rows = conn.execute(
            "SELECT provider_message_id FROM messages WHERE provider = %s AND provider_message_id = ANY(%s)",
            (provider, provider_message_ids),
        ).fetchall()
    return {row["provider_message_id"] for row in rows}


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

# An outbound message with its recipient, as notify reads it (also shared/db/sending.py's claim).
OUTBOUND_COLUMNS = """
m.id, m.conversation_id, m.contact_id, m.provider, m.provider_message_id, m.idempotency_key, m.type,
m.body, m.payload, m.status, m.error_code, m.error_message, m.attempts, m.bypass_opt_out, m.created_at,
m.updated_at, c.phone, c.bsuid, c.opted_out, v.provider AS conversation_provider,
v.business_number, c.last_inbound_at, now() AS read_at, m.send_after, m.claimed_by, m.unsent_claim,
m.sending_claim
"""
_GET_OUTBOUND = f"""
SELECT {OUTBOUND_COLUMNS}
FROM messages m
LEFT JOIN contacts c ON c.id = m.contact_id
LEFT JOIN conversations v ON v.id = m.conversation_id
WHERE m.id = %(id)s AND m.direction = 'out'
"""  # noqa: S608 - constant column list and statuses, no input
_REQUEUE = """
UPDATE messages SET status = 'queued', attempts = 0, error_code = NULL, error_message = NULL,
    updated_at = now()
WHERE id = %(id)s AND direction = 'out' AND status = 'failed'
  AND (%(only_code)s::text IS NULL OR error_code = %(only_code)s::text)
RETURNING id
"""


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
    # The database's clock when this was read: what last_inbound_at is measured against, as both are the
    # database's (a worker's own clock may run fast or slow).
    read_at: datetime
    send_after: datetime | None = None  # not before (backoff, pacing): batch claims skip it until then
    claimed_by: int | None = None  # whose notify.send task made the current 'sending' claim
    # The batch claim holding it, while its send is not yet booked for the provider call (0008's comment).
    unsent_claim: int | None = None
    # The batch claim holding it while 'sending', booked or not: what its settle matches (0017's comment).
    sending_claim: int | None = None


def _outbound(row: dict[str, Any]) -> OutboundRecord:
    return OutboundRecord(**{**row, "payload": row["payload"] or {}})


def get_outbound(conn: psycopg.Connection, message_id: int) -> OutboundRecord:
    """The outbound message with its recipient; raises ``NotFound``."""
    with wrap_errors():
        row = conn.execute(_GET_OUTBOUND, {"id": message_id}).fetchone()
    if row is None:
        raise NotFound(f"outbound message {message_id}")
    return _outbound(row)


def requeue_failed(conn: psycopg.Connection, message_id: int, *, only_code: str | None = None) -> bool:
    """Dead-letter replay: a failed outbound message becomes queued again with a fresh attempt budget.

    ``only_code``: only while it failed with this error code. A caller that decided from an earlier read
    (the notify API, for a message it could not enqueue) must not requeue one that has failed otherwise
    since, as ``outcome_unknown`` (the provider may have it): that would send it twice."""
    with wrap_errors():
        row = conn.execute(_REQUEUE, {"id": message_id, "only_code": only_code}).fetchone()
        if row is not None:
            add_event(conn, message_id, "queued", detail=REPLAYED)
    return row is not None


# --- notify's batches (workers/notify.py) ---------------------------------------------------------------

# Claims past the lease (their worker died): a message its batch never booked for the provider call
# (unsent_claim still set) goes back to the queue with its attempt given back; any other may have reached
# the provider and fails as outcome unknown. The two UPDATEs see the same snapshot and split its rows by
# unsent_claim. A booking that clears unsent_claim meanwhile is serialised with them by the row lock: the
# return re-checks the row and leaves it, so either the return wins and the booking finds nothing to clear
# (and does not send), or the booking wins and the row stays 'sending' for the next sweep to fail.
_ABANDONED = f"""
WITH returned AS (
    UPDATE messages SET status = 'queued', attempts = GREATEST(attempts - 1, 0), unsent_claim = NULL,
        sending_claim = NULL, updated_at = now()
    WHERE status = '{SENDING}' AND direction = 'out' AND unsent_claim IS NOT NULL
      AND updated_at < now() - make_interval(secs => %(lease)s)
      AND (%(claimer)s::bigint IS NULL OR claimed_by = %(claimer)s::bigint OR id = %(claimer)s::bigint)
    RETURNING id
), done AS (
    UPDATE messages SET status = 'failed', error_code = %(code)s, error_message = %(text)s,
        sending_claim = NULL, updated_at = now()
    WHERE status = '{SENDING}' AND direction = 'out' AND unsent_claim IS NULL
      AND updated_at < now() - make_interval(secs => %(lease)s)
      AND (%(claimer)s::bigint IS NULL OR claimed_by = %(claimer)s::bigint OR id = %(claimer)s::bigint)
    RETURNING id, attempts
), events AS (
    INSERT INTO message_events (message_id, status, error_code, detail)
    SELECT id, 'failed', %(code)s, %(text)s FROM done
)
SELECT id, attempts, false AS unsent FROM done
UNION ALL SELECT id, NULL, true FROM returned
ORDER BY id
"""  # noqa: S608 - constant statuses, no input
# Queued messages well past due: their notify.send job was lost (a worker died between a commit and the
# publish that followed it). Re-enqueueing one that still has a job is harmless: the claim sends once.
# The first test on the due time is the expression messages_outbound_queued_due (migration 0016) holds
# beside the id, so the walk passes over messages backed off to a later send_after inside the index
# rather than reading each from the table; the second is the one that counts (a message with no send_after
# is due since it last changed) and reads only the rows the first could not rule out.
_OVERDUE = """
SELECT id FROM messages
WHERE direction = 'out' AND status = 'queued'
  AND COALESCE(send_after, '-infinity') < now() - make_interval(secs => %(grace)s)
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
    # An earlier message to the same contact is being sent, queued and due, or put back to wait for a
    # pacing slot: this one waits its turn.
    behind: bool = False


@dataclass(frozen=True)
class Release:
    """Put a claimed message back to 'queued', due in ``delay`` seconds."""

    id: int
    delay: float
    tried: bool  # the provider was called (and failed transiently); False for a pacing wait
    code: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class Abandoned:
    """What :func:`settle_abandoned` did with the claims past the lease."""

    returned: list[int]  # never put to the provider: queued again (each needs its notify.send job)
    failed: list[tuple[int, int]]  # (id, attempts): may have reached the provider, failed as unknown


def settle_abandoned(
    conn: psycopg.Connection, *, lease_seconds: float, code: str, text: str, claimer: int | None = None
) -> Abandoned:
    """Settle the 'sending' claims older than the lease (only ``claimer``'s when given): back to the queue
    when provably never sent, failed with ``code`` otherwise."""
    with wrap_errors():
        rows = conn.execute(
            _ABANDONED, {"lease": lease_seconds, "code": code, "text": text, "claimer": claimer}
        ).fetchall()
    return Abandoned(
        returned=[row["id"] for row in rows if row["unsent"]],
        failed=[(row["id"], row["attempts"]) for row in rows if not row["unsent"]],
    )


def overdue_queued(conn: psycopg.Connection, *, grace_seconds: float, limit: int = 1000) -> list[int]:
    """Queued outbound messages due for longer than ``grace_seconds`` (their job may have been lost)."""
    with wrap_errors():
        rows = conn.execute(_OVERDUE, {"grace": grace_seconds, "limit": limit}).fetchall()
    return [row["id"] for row in rows]


# --- delivery receipts ---------------------------------------------------------------------------------

_ADD_EVENT = """
INSERT INTO message_events (message_id, status, error_code, detail, at)
VALUES (%(message_id)s, %(status)s, %(error_code)s, %(detail)s, COALESCE(%(at)s, now()))
"""
# The detail of the 'queued' event a dead-letter replay adds (requeue_failed): the message's delivery
# starts over from there.
REPLAYED = "replayed"
# The timeline's order. ``at`` mixes two clocks: the database's for our own events (queued, retrying, sent,
# failed: sent is stamped once the provider call returned and the batch settled) and the provider's for
# receipts (Meta's in whole seconds), so by time alone a quick "delivered" could come before our "sent".
# So, within each delivery attempt (the first, then one per replay), events go by the forward-only rank
# the status itself follows (shared/wire/events.py STATUS_RANK: queued < sent < delivered < read <
# failed), then by time: receipts that arrive out of order, and retries, still read as they happened. A
# status with no rank (a provider's unknown one) is a receipt about a sent message: it goes with "sent".


def rank_sql(column: str, *, otherwise: int = 0, also: Mapping[str, int] | None = None) -> str:
    """SQL for the forward-only rank of a status column; one source of truth: ``STATUS_RANK``. ``also``:
    ranks for statuses of our own that receipts never carry; ``otherwise``: the rank of any other."""
    ranks = {status.value: rank for status, rank in STATUS_RANK.items()} | dict(also or {})
    cases = " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in ranks.items())
    return f"(CASE {column} {cases} ELSE {otherwise} END)"


_TIMELINE = f"""
SELECT status, error_code, detail, at FROM (
    SELECT status, error_code, detail, at, id,
           count(*) FILTER (WHERE status = 'queued' AND detail = '{REPLAYED}') OVER (ORDER BY id) AS attempt
    FROM message_events WHERE message_id = %(message_id)s
) e
ORDER BY attempt, {rank_sql("status", also={"retrying": 0}, otherwise=1)}, at, id
"""  # noqa: S608 - constant statuses, no input


@dataclass(frozen=True)
class StatusApplied:
    message_id: int
    changed: bool  # False when the receipt was older than what we already knew (still in the timeline)
    # The receipt named the message by our own id: a send whose outcome was unknown, settled by it now.
    adopted: bool = False


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
    """The message's delivery events in the order they happened (see :data:`_TIMELINE`), not as they
    arrived."""
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
