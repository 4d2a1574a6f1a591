"""Whose turn it is in a conversation: the rows behind the handler stages' per-conversation order.

ARCHITECTURE.md promises that the messages of one conversation are handled in the order they were sent.
The router (``workers/inbound.py``) records on each inbound message that it dispatched it to a handler
(``dispatched_at``, before publishing the task); the last hop of that handler records that it answered it
(``handled_at``, :func:`shared.replies.answer`). Between the two, the message *holds the turn*: a handler
task for a later message of the same conversation waits (``workers/ordering.py``).

What holds the turn ahead of message N, among the earlier inbound messages of N's conversation that are
not handled:

- dispatched to a handler, unless dispatched more than :data:`STALE_AFTER` ago: a handler that died for
  good (killed past its redeliveries, a task lost with a broker's data) must not silence the conversation.
  In these rows a handler retrying after a failure looks the same as a dead one (through a database
  outage longer than the grace, both are just old), so the handler tasks (and the router, retrying after
  it stored the message) mark a retry in Redis with when it is due, and a stale message so marked still
  holds the turn until :data:`STALE_AFTER` past that due time (``workers/ordering.py``,
  :func:`~workers.ordering.waits_for`): this module only reports it stale;
- not routed yet (``routed_at`` unset: the router has not decided whether a handler will answer it), for
  the same grace counted from when it was stored: two messages routed by two inbound workers at once
  must not let the second's handler overtake the first's.

A message the router only stored (rate-limited, from an opted-out contact, handed to a person, a
duplicate: never a second row) is routed without a dispatch and never holds the turn.

Ids order the messages: they are assigned when the router stores a message, in arrival order (a router
stores a message only once the messages that reached the ingress before it in its conversation are
stored: shared/arrivals.py), and the stores of one contact are serialised by the upsert of its contact
row (the transaction that takes a smaller id commits before the next one can insert), so no earlier
message can appear after a later one was seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from shared.db.errors import wrap_errors
from shared.queues import outage_retry_span_seconds

# How long a dispatched (or stored but unrouted) message may hold its conversation's turn unanswered.
# Longer than any healthy handler takes (a model call with its retries, under the 5-minute task limit).
STALE_AFTER = timedelta(minutes=5)
# Earlier messages stuck longer than this are not even looked at (nor warned about again). A handler
# retrying through an outage keeps its message's turn until the grace past its last retry, which may come
# this long after the message was dispatched (its retries' countdowns alone add up to 68 minutes): a shorter
# horizon would hide a message still retrying, and a later one would go first.
HORIZON = timedelta(seconds=outage_retry_span_seconds()) + STALE_AFTER

# Only a message not routed yet: one its router gave up on is routed (_GIVE_UP_ROUTE), its handler's key
# taken so that no task of it is published, and dispatched again it would hold its turn with no handler to
# answer it. A route deciding it as the give-up commits waits for the give-up's row lock, then sees it routed.
_MARK_DISPATCHED = """
UPDATE messages SET dispatched_at = now(), dispatched_to = %(handler)s
WHERE id = %(id)s AND direction = 'in' AND handled_at IS NULL AND routed_at IS NULL
RETURNING id
"""
_DISPATCHED_TO = "SELECT dispatched_to FROM messages WHERE id = %(id)s AND direction = 'in'"
_RELEASE = """
UPDATE messages SET dispatched_at = NULL
WHERE id = %(id)s AND direction = 'in' AND handled_at IS NULL AND dispatched_at IS NOT NULL
RETURNING id
"""
# The router gave up on the message for good before publishing its handler's task: recorded as routed with
# no handler (stored only), which is what a later message's turn check and the flows' drain read as "not
# owed an answer". Its dispatched_to stays: a replay of the router's dead letter keeps that decision.
_GIVE_UP_ROUTE = """
UPDATE messages SET dispatched_at = NULL, routed_at = now()
WHERE id = %(id)s AND direction = 'in' AND handled_at IS NULL AND routed_at IS NULL
RETURNING id
"""
# A replay of the router's dead letter routes the message again: routed_at unset, as before its router gave
# up, so the route finishes instead of stopping at a duplicate. Only a message left stored only and
# unanswered; should one routed normally match (no handler: rate-limited, handed off...), the replayed route
# decides it again, and every effect of that decision is idempotent (workers/inbound.py).
_REOPEN_ROUTE = """
UPDATE messages SET routed_at = NULL
WHERE provider = %(provider)s AND provider_message_id = %(provider_message_id)s AND direction = 'in'
  AND handled_at IS NULL AND dispatched_at IS NULL AND routed_at IS NOT NULL
RETURNING id
"""
# The stored message of the router's letter that no handler answered, reopened or not: the replay frees its
# handler's key, which a give-up that did not commit may have left taken with the message still dispatched.
_UNANSWERED = """
SELECT id FROM messages
WHERE provider = %(provider)s AND provider_message_id = %(provider_message_id)s AND direction = 'in'
  AND handled_at IS NULL
"""
# A replay of the router's letter whose route could not be enqueued gives the message up again, as its router
# had: routed with no handler. Unless the route was enqueued after all (a publish that timed out may have
# landed) and has dispatched the message since: that dispatch holds the turn for a handler about to answer it.
_UNDO_REOPEN = """
UPDATE messages SET routed_at = now()
WHERE id = %(id)s AND direction = 'in' AND handled_at IS NULL AND routed_at IS NULL AND dispatched_at IS NULL
RETURNING id
"""
# Whether ``{p}`` is an earlier inbound message of ``me``'s conversation that may hold its turn: not
# handled, and dispatched or not routed yet (the predicate of the partial index messages_turn, repeated so
# the planner can use it), and not left to ``me``'s own stage (``own_stage``, see ahead_of).
_OWED_BEFORE_ME = """
{p}.conversation_id = me.conversation_id
  AND {p}.direction = 'in' AND {p}.handled_at IS NULL
  AND ({p}.dispatched_at IS NOT NULL OR {p}.routed_at IS NULL)
  AND {p}.id < me.id
  AND (%(own_stage)s::text IS NULL OR {p}.dispatched_to IS DISTINCT FROM %(own_stage)s::text)
"""
# The earlier messages of ``me``'s conversation that may hold its turn, oldest first, each with whether it
# held it too long: every stale one (within the horizon) up to the earliest that is not, and that one;
# none when ``me`` itself is already handled (a redelivered task: its predecessors were settled the first
# time). Not a window of the first n: past n stale ones, it would hide the message still holding the turn
# after them, or a stale one whose handler is retrying (workers/ordering.py reads their marks). Both scans
# stop early on the index: the earliest live message is one probe in the usual case (the oldest unanswered
# message is live), and the rows up to it are those before it. The stale rows are bounded by the horizon
# and the sender's rate limit (a rate-limited message never holds the turn). A subquery on ``me``, an
# inbound ``messages`` row of the enclosing query, so the handler's first read (shared/db/answers.py)
# checks the turn with exactly these rules.
AHEAD_OF_ME = f"""
SELECT p.id, COALESCE(p.dispatched_at, p.created_at) < now() - %(stale)s AS stale
FROM messages p
WHERE me.handled_at IS NULL AND {_OWED_BEFORE_ME.format(p="p")}
  AND COALESCE(p.dispatched_at, p.created_at) > now() - %(horizon)s
  AND p.id <= COALESCE((
      SELECT q.id FROM messages q
      WHERE {_OWED_BEFORE_ME.format(p="q")}
        AND COALESCE(q.dispatched_at, q.created_at) >= now() - %(stale)s
      ORDER BY q.id
      LIMIT 1
  ), me.id)
ORDER BY p.id
"""  # noqa: S608 - constant subqueries, no input
# How long ago ``me`` was dispatched (or stored, not routed yet), in seconds, as AHEAD_OF_ME ages the
# messages before it: whether a later message could soon find ``me`` stale (workers/ordering.py).
OWN_AGE = "EXTRACT(EPOCH FROM now() - COALESCE(me.dispatched_at, me.created_at))::float8"
_AHEAD = f"""
SELECT ahead.id, ahead.stale, {OWN_AGE} AS own_age
FROM messages me, LATERAL ({AHEAD_OF_ME}) ahead
WHERE me.id = %(id)s AND me.direction = 'in'
ORDER BY ahead.id
"""  # noqa: S608 - constant subquery, no input


@dataclass(frozen=True)
class Turn:
    """Who is ahead of a message: the earliest message it must wait for (None: its turn), and the
    earlier messages passed over because they held the turn too long (:data:`STALE_AFTER`).

    ``own_age``: how long ago the message itself was dispatched (seconds), read with the turn when there
    are earlier messages; None when not known. ``one_stage``: the turn was read for one stage only (its
    earlier messages may then wait for messages not listed here). Measures, not part of who is ahead: not
    compared."""

    waiting_for: int | None
    stale: tuple[int, ...] = ()
    own_age: float | None = field(default=None, compare=False)
    one_stage: bool = field(default=False, compare=False)


def mark_dispatched(conn: psycopg.Connection, message_id: int, handler: str) -> bool:
    """The router is about to publish the message's ``handler`` task: from now on it holds the turn. False
    when it was not marked, the task then not to be published: the message is answered already, or routed
    (a run of its route gave it up: :func:`give_up_route`)."""
    with wrap_errors():
        return conn.execute(_MARK_DISPATCHED, {"id": message_id, "handler": handler}).fetchone() is not None


def dispatched_to(conn: psycopg.Connection, message_id: int) -> str | None:
    """The handler task the router dispatched the message to; None when it dispatched it to none."""
    with wrap_errors():
        row = conn.execute(_DISPATCHED_TO, {"id": message_id}).fetchone()
    return row["dispatched_to"] if row is not None else None


def release(conn: psycopg.Connection, message_id: int) -> bool:
    """The handler gave up on the message for good: it stops holding the turn. True if it held it."""
    with wrap_errors():
        return conn.execute(_RELEASE, {"id": message_id}).fetchone() is not None


def give_up_route(conn: psycopg.Connection, message_id: int) -> bool:
    """The router gave up on the stored message for good, its handler's task unpublished: it stops holding
    the turn (dispatched or not routed, it would hold it until :data:`STALE_AFTER`). True if it held it.
    Committed only once no run of the route can publish that task any more (workers/ordering.py
    ``give_up_turn``): the dispatch it clears may be another run's, whose publish is under way."""
    with wrap_errors():
        return conn.execute(_GIVE_UP_ROUTE, {"id": message_id}).fetchone() is not None


def reopen_route(conn: psycopg.Connection, provider: str, provider_message_id: str) -> int | None:
    """Undo :func:`give_up_route` for a replay of the router's dead letter: the id of the message to be
    routed again, None when there is none to reopen (not stored, or owed or given an answer)."""
    params = {"provider": provider, "provider_message_id": provider_message_id}
    with wrap_errors():
        row = conn.execute(_REOPEN_ROUTE, params).fetchone()
    return row["id"] if row is not None else None


def unanswered(conn: psycopg.Connection, provider: str, provider_message_id: str) -> int | None:
    """The id of the stored inbound message no handler answered; None when there is none."""
    params = {"provider": provider, "provider_message_id": provider_message_id}
    with wrap_errors():
        row = conn.execute(_UNANSWERED, params).fetchone()
    return row["id"] if row is not None else None


def undo_reopen(conn: psycopg.Connection, message_id: int) -> bool:
    """Undo :func:`reopen_route` when the replay's route could not be enqueued: the message is given up on
    again, unless a route has dispatched it since. True if it was given up on."""
    with wrap_errors():
        return conn.execute(_UNDO_REOPEN, {"id": message_id}).fetchone() is not None


def ahead_of(conn: psycopg.Connection, message_id: int, own_stage: str | None = None) -> Turn:
    """Whether inbound message ``message_id`` may be handled now, or which earlier message it waits for.

    ``own_stage``: the task of a stage that answers the earlier messages dispatched to it itself, in
    order (``flows.step``); those are then not waited for.
    """
    with wrap_errors():
        rows = conn.execute(_AHEAD, {"id": message_id} | ahead_params(own_stage)).fetchall()
    own_age = rows[0]["own_age"] if rows else None
    return turn_from([(row["id"], row["stale"]) for row in rows], own_age, own_stage)


def ahead_params(own_stage: str | None = None) -> dict[str, object]:
    """The parameters of :data:`AHEAD_OF_ME` besides those of the enclosing query."""
    return {"stale": STALE_AFTER, "horizon": HORIZON, "own_stage": own_stage}


def turn_from(
    ahead: Sequence[tuple[int, bool]], own_age: float | None = None, own_stage: str | None = None
) -> Turn:
    """The :class:`Turn` given the rows of :data:`AHEAD_OF_ME`, (id, stale) oldest first, the message's
    :data:`OWN_AGE` and the ``own_stage`` they were read for."""
    one_stage = own_stage is not None
    stale: list[int] = []
    for message_id, is_stale in ahead:
        if not is_stale:
            return Turn(message_id, tuple(stale), own_age, one_stage)
        stale.append(message_id)
    return Turn(None, tuple(stale), own_age, one_stage)
