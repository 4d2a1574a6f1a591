"""Housekeeping queries the ``maintenance`` jobs run: idle conversations, turns held by lost handlers, old
webhook events, dead letters.

Each statement is idempotent by construction (a second run finds nothing left to change) and touches a
bounded batch of rows, so a job on a large table never holds one long transaction or lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from shared.db.errors import wrap_errors
from shared.db.turns import HORIZON

# SKIP LOCKED: a conversation the inbound worker is touching right now (its row is locked) is simply
# not idle; the next run looks again. FOR UPDATE re-checks the idle condition on the row's latest version.
# Nor is a conversation idle while a message of it still waits for its answer: a handler retrying through
# an outage may answer up to turns.HORIZON after its dispatch, and an idle setting shorter than that would
# close the conversation under it, leaving the user with no answer. A message past the horizon is stale
# (its handler is gone for good) and keeps nothing open. The subquery repeats the predicate of the partial
# index messages_turn, as shared/db/turns.py AHEAD_OF_ME does, so it reads only that small index.
_CLOSE_IDLE = """
WITH idle AS (
    SELECT id FROM conversations
    WHERE status <> 'closed' AND last_message_at < now() - make_interval(mins => %(minutes)s)
      AND NOT EXISTS (
          SELECT FROM messages p
          WHERE p.conversation_id = conversations.id
            AND p.direction = 'in' AND p.handled_at IS NULL
            AND (p.dispatched_at IS NOT NULL OR p.routed_at IS NULL)
            AND COALESCE(p.dispatched_at, p.created_at) > now() - %(horizon)s
      )
    ORDER BY last_message_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
UPDATE conversations c SET status = 'closed', closed_at = now()
FROM idle WHERE c.id = idle.id
"""
# turns.release for the messages whose handler was lost without failing (so StageTask.on_failure never
# released them): past turns.HORIZON no handler can still answer, and the turn check already passes them
# over, but they stay in messages_turn and every later turn check of their conversation reads them. The
# same change as turns.release (only dispatched_at), so the row keeps what else it says. The predicate of
# messages_turn is repeated so the planner reads that small index; SKIP LOCKED leaves a row a worker is
# answering right now to the next run.
_RELEASE_LOST_TURNS = """
UPDATE messages SET dispatched_at = NULL
WHERE id IN (
    SELECT id FROM messages
    WHERE direction = 'in' AND handled_at IS NULL
      AND (dispatched_at IS NOT NULL OR routed_at IS NULL)
      AND dispatched_at < now() - %(horizon)s
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
AND direction = 'in' AND handled_at IS NULL AND dispatched_at < now() - %(horizon)s
"""
_PURGE_WEBHOOK_EVENTS = """
DELETE FROM webhook_events WHERE id IN (
    SELECT id FROM webhook_events
    WHERE received_at < now() - make_interval(days => %(days)s)
    ORDER BY id
    LIMIT %(batch)s
)
"""
_COUNT_EXPIRED_WEBHOOK_EVENTS = """
SELECT count(*) AS n FROM webhook_events WHERE received_at < now() - make_interval(days => %(days)s)
"""
_PENDING_DEAD_LETTERS = """
SELECT count(*) AS count, now() - min(created_at) AS oldest_age
FROM dead_letters WHERE replayed_at IS NULL AND discarded_at IS NULL
"""


@dataclass(frozen=True)
class DeadLetterSummary:
    count: int
    oldest_age_seconds: float | None


def close_idle_conversations(conn: psycopg.Connection, idle_minutes: int, batch: int = 1000) -> int:
    """Close up to ``batch`` live conversations with no message for ``idle_minutes`` and none still
    waiting for its answer; return how many."""
    params = {"minutes": idle_minutes, "batch": batch} | close_idle_params()
    with wrap_errors():
        return conn.execute(_CLOSE_IDLE, params).rowcount


def close_idle_params() -> dict[str, object]:
    """The parameters of the idle close besides the idle time and batch size."""
    return {"horizon": HORIZON}


def release_lost_turns(conn: psycopg.Connection, batch: int = 1000) -> int:
    """Release the turns of up to ``batch`` inbound messages dispatched more than turns.HORIZON ago and
    still unanswered; return how many."""
    with wrap_errors():
        return conn.execute(_RELEASE_LOST_TURNS, {"horizon": HORIZON, "batch": batch}).rowcount


def purge_webhook_events(conn: psycopg.Connection, retention_days: int, batch: int = 1000) -> int:
    """Delete up to ``batch`` raw webhook events older than the retention; return how many."""
    with wrap_errors():
        return conn.execute(_PURGE_WEBHOOK_EVENTS, {"days": retention_days, "batch": batch}).rowcount


def count_expired_webhook_events(conn: psycopg.Connection, retention_days: int) -> int:
    """How many raw webhook events are older than the retention (an index range scan on received_at)."""
    with wrap_errors():
        row = conn.execute(_COUNT_EXPIRED_WEBHOOK_EVENTS, {"days": retention_days}).fetchone()
    assert row is not None
    return int(row["n"])


def pending_dead_letters(conn: psycopg.Connection) -> DeadLetterSummary:
    """How many dead letters wait for an operator, and how long the oldest has waited."""
    with wrap_errors():
        row = conn.execute(_PENDING_DEAD_LETTERS).fetchone()
    assert row is not None
    age = row["oldest_age"]
    return DeadLetterSummary(count=row["count"], oldest_age_seconds=age.total_seconds() if age else None)
