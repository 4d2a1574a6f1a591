"""notify.send's and status.apply's statements, each one round trip: the per-message hot path.

A message through notify used to cost three transactions (look, claim, settle: nine round trips to
PostgreSQL with BEGIN and COMMIT) and a receipt one transaction of three statements (five). Here every
step is a single statement, and a single statement is atomic on its own, so it runs outside an explicit
transaction (:func:`shared.db.pool.autocommit_connection`): one round trip per step (plus the pool's
ping when the connection sat idle, see shared/db/pool.py).

- :func:`claim`: claim the task's own message and up to ``more`` other due queued ones, and in the same
  statement say where the own message stood when it could not be claimed (sent, in another batch, not
  due yet, missing).
- :func:`calling`: the sends of a booking are about to be put to the provider (proof, until then, that a
  claim left by a dead worker never reached it); :func:`not_calling`: some were not booked after all.
- :func:`settle`: a batch's outcomes (sent, failed, back to the queue) and their timeline events.
- :func:`apply_status`: a delivery receipt's forward-only move and its timeline event.

The rules are those of :mod:`shared.db.messages` (which holds the single-message statements and the
status ranks): the claim moves rows out of ``queued`` under a row lock, so two claimers never get one
row, a batch's settle moves only the rows its claim still holds, and a status only ever moves forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from shared.db.errors import wrap_errors
from shared.db.messages import (
    OUTBOUND_COLUMNS,
    SENDING,
    OutboundRecord,
    Release,
    SendState,
    StatusApplied,
    rank_sql,
)
from shared.providers.base import OutcomeUnknown
from shared.queues import NOTIFY_TASK
from shared.wire.events import STATUS_RANK, DeliveryStatus

# --- notify's claim ------------------------------------------------------------------------------------

# A recipient's messages go to the provider one at a time, in the order they were stored (replies to
# "/help" then "/project" sent concurrently reached the user the other way round): a message is claimed
# only when no earlier one to its contact is being sent, or queued and due (the batch that takes that one
# leaves this one for later), or queued a moment later but never yet put to the provider (attempts 0: a
# batch put it back to wait for a pacing slot, giving its attempt back; a later one taken meanwhile would
# reach the provider first). One waiting out a retry after a provider error holds nothing back: with up to
# WAPIPE_SEND_MAX_ATTEMPTS attempts, it could otherwise stop a recipient's messages for hours. The
# partial index messages_outbound_pending_contact (migration 0009) keeps it to the contact's pending rows.
_EARLIER_PENDING = f"""EXISTS (
    SELECT 1 FROM messages earlier
    WHERE earlier.contact_id = messages.contact_id AND earlier.direction = 'out'
      AND earlier.id < messages.id AND earlier.status IN ('queued', '{SENDING}')
      AND (earlier.status = '{SENDING}' OR earlier.send_after IS NULL OR earlier.send_after <= now()
           OR earlier.attempts = 0)
)"""  # noqa: S608 - constant status, no input

# ``own_state`` is the own message as it stood before this statement (the statement's snapshot): it is
# what the task reads when nothing was claimed. The own message is claimed only when it is queued, due
# and next for its recipient; the others (SKIP LOCKED, oldest first, each next for its recipient) only
# when it is. A row joins every claimed row to the one state row, so "nothing claimed" is one row with
# the state and NULL message columns, and "no such message" is no row at all. A concurrent claimer that
# takes the own row between snapshot and UPDATE leaves the state saying 'queued' with nothing claimed:
# the task then stands back. ``own_behind`` is looked up only for a queued message, the one case that
# reads it: most jobs find their message already taken by another batch. ``picked`` writes "due" as
# ``COALESCE(send_after, '-infinity') <= now()``, the expression messages_outbound_queued_due (migration
# 0016) holds beside the id: its walk, oldest first, passes over messages backed off to a later send_after
# inside the index rather than reading each from the table (see the migration for the figures).
_STATE = f"""status AS own_status, claimed_by AS own_claimed_by,
           extract(epoch FROM now() - updated_at)::float AS own_age,
           extract(epoch FROM send_after - now())::float AS own_due_in,
           (status = 'queued' AND {_EARLIER_PENDING}) AS own_behind"""
_CLAIM = f"""
WITH own_state AS (
    SELECT {_STATE}
    FROM messages WHERE id = %(id)s AND direction = 'out'
), own AS (
    UPDATE messages SET status = '{SENDING}', attempts = attempts + 1, updated_at = now(),
        claimed_by = id, send_after = NULL, unsent_claim = txid_current(), sending_claim = txid_current()
    WHERE id = %(id)s AND direction = 'out' AND status = 'queued'
      AND (send_after IS NULL OR send_after <= now()) AND NOT {_EARLIER_PENDING}
    RETURNING *
), picked AS (
    SELECT id FROM messages
    WHERE EXISTS (SELECT 1 FROM own) AND direction = 'out' AND status = 'queued' AND id <> %(id)s
      AND COALESCE(send_after, '-infinity') <= now() AND NOT {_EARLIER_PENDING}
    ORDER BY id
    LIMIT %(more)s
    FOR UPDATE SKIP LOCKED
), others AS (
    UPDATE messages m SET status = '{SENDING}', attempts = m.attempts + 1, updated_at = now(),
        claimed_by = %(id)s, send_after = NULL, unsent_claim = txid_current(), sending_claim = txid_current()
    FROM picked WHERE m.id = picked.id
    RETURNING m.*
), claimed AS (
    SELECT {OUTBOUND_COLUMNS}
    FROM (SELECT * FROM own UNION ALL SELECT * FROM others) m
    LEFT JOIN contacts c ON c.id = m.contact_id
    LEFT JOIN conversations v ON v.id = m.conversation_id
)
SELECT own_state.*, claimed.* FROM own_state LEFT JOIN claimed ON true
ORDER BY claimed.id <> %(id)s, claimed.id
"""  # noqa: S608 - constant column list and statuses, no input
_STATE_COLUMNS = ("own_status", "own_claimed_by", "own_age", "own_due_in", "own_behind")


@dataclass(frozen=True)
class Claim:
    """What one claim got: the batch (the own message first), or, when empty, where the own message
    stood (sent, failed, 'sending' in some batch, queued but not due, or queued and just taken)."""

    batch: list[OutboundRecord]
    state: SendState


def claim(conn: psycopg.Connection, message_id: int, more: int) -> Claim | None:
    """Claim the message, if queued and due, and up to ``more`` other due queued ones (``queued ->
    sending``, one attempt more each, ``claimed_by`` = ``message_id``, ``unsent_claim`` and
    ``sending_claim`` = this claim's transaction id). None: no such outbound message."""
    with wrap_errors():
        rows = conn.execute(_CLAIM, {"id": message_id, "more": max(0, more)}).fetchall()
    if not rows:
        return None
    batch = [_record(row) for row in rows if row["id"] is not None]
    return Claim(batch, _state(rows[0]))


_STATES = f"""
SELECT id, {_STATE} FROM messages WHERE id = ANY(%(ids)s::bigint[]) AND direction = 'out'
"""  # noqa: S608 - constant column list, no input


def states(conn: psycopg.Connection, message_ids: Sequence[int]) -> dict[int, SendState]:
    """Where each of these outbound messages stands, as a claim that could not take it would say (one
    statement for a batched job's messages, most of which an earlier batch has usually taken)."""
    with wrap_errors():
        rows = conn.execute(_STATES, {"ids": list(message_ids)}).fetchall()
    return {row["id"]: _state(row) for row in rows}


def _state(row: Mapping[str, Any]) -> SendState:
    return SendState(
        status=row["own_status"],
        claimed_by=row["own_claimed_by"],
        age=row["own_age"],
        due_in=row["own_due_in"],
        behind=row["own_behind"],
    )


def _record(row: dict[str, object]) -> OutboundRecord:
    fields = {key: value for key, value in row.items() if key not in _STATE_COLUMNS}
    return OutboundRecord(**{**fields, "payload": fields["payload"] or {}})  # type: ignore[arg-type]


# --- notify's provider calls -----------------------------------------------------------------------------

# Before a booking's sends go to the provider: clear their claims' unsent mark, but only where the claim
# still holds the row (a sweep that found the worker past its lease may have put it back in the queue;
# then the row is no longer this claim's to send). The row records the provider it goes to, which may not
# be the one it was stored for (the configured provider changed meanwhile): should the answer be lost,
# only that provider's receipts may settle it (_APPLY_STATUS).
_CALLING = f"""
UPDATE messages m SET unsent_claim = NULL, provider = COALESCE(%(provider)s, m.provider)
FROM unnest(%(ids)s::bigint[], %(claims)s::bigint[]) AS v(id, claim)
WHERE m.id = v.id AND m.unsent_claim = v.claim AND m.status = '{SENDING}'
RETURNING m.id
"""  # noqa: S608 - constant status, no input


def calling(
    conn: psycopg.Connection, claims: Sequence[tuple[int, int]], provider: str | None = None
) -> set[int]:
    """These (message id, claim) sends are about to be put to ``provider`` (recorded on each row when
    given): from now on their outcome is unknown should the worker die. The ids whose claim still held
    them; send only those."""
    with wrap_errors():
        rows = conn.execute(
            _CALLING,
            {"ids": [c[0] for c in claims], "claims": [c[1] for c in claims], "provider": provider},
        ).fetchall()
    return {row["id"] for row in rows}


# A send taken for a booking that did not reach it (the slots ran out, or the number is blocked) is no
# nearer the provider than before, so its mark goes back on while it waits for the next booking: a worker
# dying meanwhile leaves it provably unsent, to be sent again, instead of outcome unknown. The mark goes
# back on only where the claim still holds the row: a worker that outlived its lease may find the row
# failed by the sweep (outcome unknown), or back in the queue and claimed by another batch, which may have
# booked it already; marking that claim's row would let the sweep send it a second time.
_NOT_CALLING = f"""
UPDATE messages m SET unsent_claim = v.claim
FROM unnest(%(ids)s::bigint[], %(claims)s::bigint[]) AS v(id, claim)
WHERE m.id = v.id AND m.sending_claim = v.claim AND m.unsent_claim IS NULL AND m.status = '{SENDING}'
RETURNING m.id
"""  # noqa: S608 - constant status, no input


def not_calling(conn: psycopg.Connection, claims: Sequence[tuple[int, int]]) -> set[int]:
    """These (message id, claim) sends, cleared by :func:`calling`, were not booked after all: mark them
    unsent again. The ids marked: the others are no longer their claim's to send."""
    with wrap_errors():
        rows = conn.execute(
            _NOT_CALLING, {"ids": [c[0] for c in claims], "claims": [c[1] for c in claims]}
        ).fetchall()
    return {row["id"] for row in rows}


# --- notify's outcomes ---------------------------------------------------------------------------------

# Every outcome kind in one statement; each CTE touches only the ids of its own kind (disjoint: a message
# has one outcome). A message never put to the provider (a pacing wait) gives its attempt back and keeps
# its last error; one that was tried records this error and a 'retrying' event. Returns the ids failed
# now.
#
# Each moves only a row the batch's own claim still holds ('sending' under its sending_claim), and ends
# that claim (sending_claim NULL). The same statement may run again after its first run committed (a retry
# after a lost answer, a chunk written again with the next), and a worker may outlive its lease: by then
# the row may be settled, or back in the queue and claimed by another batch that is sending it. Matching
# 'sending' alone, this batch would put that claim's row back in the queue (the other batch's outcome then
# found nothing to settle and a third batch sent it again) or record its own outcome over it. Ending the
# claim keeps a worker of the release before 0017, whose claim sets no sending_claim, from taking over a
# token this batch would match again.
_SETTLE = f"""
WITH sent AS (
    UPDATE messages m SET status = 'sent', provider = v.provider, provider_message_id = v.provider_message_id,
        error_code = NULL, error_message = NULL, updated_at = now(), sending_claim = NULL
    FROM unnest(%(sent_ids)s::bigint[], %(sent_providers)s::text[], %(sent_provider_ids)s::text[])
        AS v(id, provider, provider_message_id)
    WHERE m.id = v.id AND m.status = '{SENDING}' AND m.sending_claim = %(claim)s::bigint
    RETURNING m.id
), failed AS (
    UPDATE messages m SET status = 'failed', error_code = v.code, error_message = v.text, updated_at = now(),
        sending_claim = NULL
    FROM unnest(%(failed_ids)s::bigint[], %(failed_codes)s::text[], %(failed_texts)s::text[])
        AS v(id, code, text)
    WHERE m.id = v.id AND m.status = '{SENDING}' AND m.sending_claim = %(claim)s::bigint
    RETURNING m.id, v.code, v.text
), released AS (
    UPDATE messages m SET status = 'queued',
        attempts = m.attempts - CASE WHEN v.tried THEN 0 ELSE 1 END,
        error_code = CASE WHEN v.tried THEN v.code ELSE m.error_code END,
        error_message = CASE WHEN v.tried THEN v.text ELSE m.error_message END,
        send_after = now() + make_interval(secs => v.delay), updated_at = now(), sending_claim = NULL
    FROM unnest(%(released_ids)s::bigint[], %(released_delays)s::float8[], %(released_tried)s::boolean[],
                %(released_codes)s::text[], %(released_texts)s::text[]) AS v(id, delay, tried, code, text)
    WHERE m.id = v.id AND m.status = '{SENDING}' AND m.sending_claim = %(claim)s::bigint
    RETURNING m.id, v.tried, v.code, v.text
), events AS (
    INSERT INTO message_events (message_id, status, error_code, detail)
    SELECT id, 'sent', NULL, NULL FROM sent
    UNION ALL SELECT id, 'failed', code, text FROM failed
    UNION ALL SELECT id, 'retrying', code, text FROM released WHERE tried
)
SELECT id FROM failed
"""  # noqa: S608 - constant statuses, no input


def settle(
    conn: psycopg.Connection,
    *,
    claim: int,
    sent: Sequence[tuple[int, str, str]] = (),
    failed: Sequence[tuple[int, str, str]] = (),
    released: Sequence[Release] = (),
) -> list[int]:
    """Record a batch's outcomes in one statement: ``sent`` (id, provider, provider id), ``failed`` (id,
    code, reason; final), ``released`` (back to queued), each only where ``claim`` (the batch's
    ``sending_claim``) still holds the row. Returns the ids failed now."""
    params = {
        "claim": claim,
        "sent_ids": [s[0] for s in sent],
        "sent_providers": [s[1] for s in sent],
        "sent_provider_ids": [s[2] for s in sent],
        "failed_ids": [f[0] for f in failed],
        "failed_codes": [f[1] for f in failed],
        "failed_texts": [f[2] for f in failed],
        "released_ids": [r.id for r in released],
        "released_delays": [max(0.0, r.delay) for r in released],
        "released_tried": [r.tried for r in released],
        "released_codes": [r.code for r in released],
        "released_texts": [r.text for r in released],
    }
    with wrap_errors():
        rows = conn.execute(_SETTLE, params).fetchall()
    return [row["id"] for row in rows]


# --- delivery receipts ---------------------------------------------------------------------------------

OUTCOME_UNKNOWN = OutcomeUnknown.CODE
_SENT_RANK = STATUS_RANK[DeliveryStatus.sent]


# Find, move forward and append to the timeline in one statement. Only our outbound messages take
# receipts: an inbound message's provider id (a provider's mix-up, a forged id) finds nothing. The UPDATE
# re-checks its WHERE on the locked row (READ COMMITTED), so two receipts racing each other can only ever
# leave the higher-ranked status; a status with no rank (NULL) moves nothing and is only recorded. Every
# receipt is appended, whatever its order.
#
# When the provider id names no message, the receipt may still name ours (``our_id``, echoed from the send:
# shared/wire/events.py OUR_ID_PREFIX): a send whose answer was lost, failed as outcome_unknown, or still
# 'sending' past the provider call (its claim booked: unsent_claim NULL). That message is ``adopted``: it
# takes the provider id, and the receipt's status even from 'failed' (the receipt is the outcome that was
# unknown): sent, delivered or read, or, for a failure, the provider's error as a plain failure; a receipt
# that only says the provider has it (Twilio's queued) makes it sent. Its pending notify dead letter is
# closed, so `wapipe dlq replay` no longer offers to send it again. Our id alone is never trusted further:
# only a message of the receipt's provider with no provider id of its own, in one of those two states.
# The row lock serialises two receipts adopting one message: the second re-checks provider_message_id and
# finds nothing, then the provider id on its next look.
_APPLY_STATUS = f"""
WITH known AS (
    SELECT id FROM messages
    WHERE provider = %(provider)s AND provider_message_id = %(provider_message_id)s AND direction = 'out'
), adopted AS (
    UPDATE messages m SET provider_message_id = %(provider_message_id)s,
        status = CASE WHEN %(rank)s::int >= {_SENT_RANK} THEN %(status)s ELSE 'sent' END,
        error_code = CASE WHEN %(failure)s THEN %(error_code)s END,
        error_message = CASE WHEN %(failure)s THEN %(error_message)s END,
        unsent_claim = NULL, send_after = NULL, updated_at = now()
    WHERE m.id = %(our_id)s AND NOT EXISTS (SELECT 1 FROM known) AND %(rank)s::int IS NOT NULL
      AND m.direction = 'out' AND m.provider = %(provider)s AND m.provider_message_id IS NULL
      AND ((m.status = '{SENDING}' AND m.unsent_claim IS NULL)
           OR (m.status = 'failed' AND m.error_code = '{OUTCOME_UNKNOWN}'))
    RETURNING m.id
), resolved AS (
    UPDATE dead_letters SET discarded_at = now(), discard_reason = %(resolution)s
    WHERE task_name = '{NOTIFY_TASK}' AND message_id IN (SELECT id FROM adopted)
      AND replayed_at IS NULL AND discarded_at IS NULL
), advanced AS (
    UPDATE messages m SET status = %(status)s,
        error_code = COALESCE(%(error_code)s, m.error_code),
        error_message = COALESCE(%(error_message)s, m.error_message),
        updated_at = now()
    FROM known WHERE m.id = known.id AND {rank_sql("m.status")} < %(rank)s::int
    RETURNING m.id
), found AS (
    SELECT id FROM known UNION ALL SELECT id FROM adopted
), events AS (
    INSERT INTO message_events (message_id, status, error_code, detail, at)
    SELECT id, %(status)s, %(error_code)s, %(error_message)s, COALESCE(%(at)s, now()) FROM found
)
SELECT found.id, EXISTS (SELECT 1 FROM advanced UNION ALL SELECT 1 FROM adopted) AS changed,
    EXISTS (SELECT 1 FROM adopted) AS adopted
FROM found
"""  # noqa: S608 - constant statuses and task name, no input


def apply_status(
    conn: psycopg.Connection,
    *,
    provider: str,
    provider_message_id: str,
    status: DeliveryStatus,
    error_code: str | None = None,
    error_message: str | None = None,
    at: datetime | None = None,
    our_message_id: int | None = None,
) -> StatusApplied | None:
    """Apply a delivery receipt; None when no message has that provider id (yet). ``our_message_id``: the
    message the receipt names by our own id, adopted when the provider id names none and it is a send
    whose outcome we never learnt (see _APPLY_STATUS)."""
    rank = STATUS_RANK.get(status)
    params = {
        "provider": provider,
        "provider_message_id": provider_message_id,
        "status": status.value,
        "rank": rank,
        "failure": rank is not None and rank >= STATUS_RANK[DeliveryStatus.failed],
        "error_code": error_code,
        "error_message": error_message,
        "at": at,
        "our_id": our_message_id,
        "resolution": f"settled by the provider's receipt: {status.value}",
    }
    with wrap_errors():
        row = conn.execute(_APPLY_STATUS, params).fetchone()
    return StatusApplied(row["id"], row["changed"], row["adopted"]) if row else None
